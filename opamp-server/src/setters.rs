//! Builder setters that store their argument.

/// Builder methods that set one field each: every entry is its doc comment
/// and `name(argument: Type) => field.path = value;`, and becomes
/// `pub fn name(mut self, argument: Type) -> Self`.
macro_rules! setters {
    ($(
        $(#[$doc:meta])*
        $name:ident($arg:ident: $ty:ty) => $($field:ident).+ = $value:expr;
    )+) => {$(
        $(#[$doc])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.$($field).+ = $value;
            self
        }
    )+};
}

pub(crate) use setters;

//! A macro for the builder setters of this crate, `opamp-client` and
//! `opamp-server`.

/// Writes builder setters that store their argument in a field:
///
/// ```text
/// builder_setters! {
///     /// Bound on opening one connection.
///     pub fn connect_timeout(timeout: Duration) => connect_timeout = Some(timeout);
/// }
/// ```
///
/// becomes `pub fn connect_timeout(mut self, timeout: Duration) -> Self`,
/// documented as written, that sets `self.connect_timeout` and returns `self`.
/// The field may be a path (`settings.max_message_size = bytes`).
/// Setters that do more than store a value are written out by hand.
#[doc(hidden)]
#[macro_export]
macro_rules! builder_setters {
    ($(
        $(#[$attr:meta])*
        pub fn $name:ident($arg:ident: $ty:ty) => $($field:ident).+ = $value:expr;
    )*) => {
        $(
            $(#[$attr])*
            pub fn $name(mut self, $arg: $ty) -> Self {
                self.$($field).+ = $value;
                self
            }
        )*
    };
}

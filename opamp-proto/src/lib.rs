//! placeholder
#[allow(missing_docs)]
mod generated {
    include!("generated/opamp.proto.v1.rs");
}

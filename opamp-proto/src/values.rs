//! Constructors for attribute values and agent descriptions.

use bytes::Bytes;

use crate::generated::{
    AgentDescription, AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value,
};

/// Attribute keys from the OpenTelemetry resource semantic conventions that
/// OpAMP's `AgentDescription` uses (DESC-01..06).
pub mod semconv {
    /// Identifying: the agent type, e.g. `io.opentelemetry.collector`.
    pub const SERVICE_NAME: &str = "service.name";
    /// Identifying: a namespace for `service.name`, if used.
    pub const SERVICE_NAMESPACE: &str = "service.namespace";
    /// Identifying: the agent build version.
    pub const SERVICE_VERSION: &str = "service.version";
    /// Identifying: the instance id; may equal the OpAMP instance uid.
    pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
    /// Non-identifying: operating system family, e.g. `linux`.
    pub const OS_TYPE: &str = "os.type";
    /// Non-identifying: operating system version.
    pub const OS_VERSION: &str = "os.version";
    /// Non-identifying: operating system description.
    pub const OS_DESCRIPTION: &str = "os.description";
    /// Non-identifying: host name.
    pub const HOST_NAME: &str = "host.name";
    /// Non-identifying: CPU architecture, e.g. `amd64`.
    pub const HOST_ARCH: &str = "host.arch";
    /// Non-identifying: the deployment environment, e.g. `production`.
    pub const DEPLOYMENT_ENVIRONMENT_NAME: &str = "deployment.environment.name";
}

impl AnyValue {
    /// A string value.
    pub fn string(value: impl Into<String>) -> Self {
        Self {
            value: Some(Value::StringValue(value.into())),
        }
    }

    /// A boolean value.
    pub fn bool(value: bool) -> Self {
        Self {
            value: Some(Value::BoolValue(value)),
        }
    }

    /// An integer value.
    pub fn int(value: i64) -> Self {
        Self {
            value: Some(Value::IntValue(value)),
        }
    }

    /// A floating-point value.
    pub fn double(value: f64) -> Self {
        Self {
            value: Some(Value::DoubleValue(value)),
        }
    }

    /// A byte-string value.
    pub fn bytes(value: impl Into<Bytes>) -> Self {
        Self {
            value: Some(Value::BytesValue(value.into())),
        }
    }

    /// An array of values.
    pub fn array(values: impl IntoIterator<Item = AnyValue>) -> Self {
        Self {
            value: Some(Value::ArrayValue(ArrayValue {
                values: values.into_iter().collect(),
            })),
        }
    }

    /// A nested list of key/value pairs.
    pub fn kvlist(values: impl IntoIterator<Item = KeyValue>) -> Self {
        Self {
            value: Some(Value::KvlistValue(KeyValueList {
                values: values.into_iter().collect(),
            })),
        }
    }

    /// The string inside, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Some(Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    /// A short text form for display: strings as-is, other scalars via
    /// `Display`, bytes as hex, arrays and lists in brackets.
    pub fn to_display_string(&self) -> String {
        match &self.value {
            None => String::new(),
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            Some(Value::BytesValue(b)) => b.iter().map(|byte| format!("{byte:02x}")).collect(),
            Some(Value::ArrayValue(a)) => {
                let items: Vec<_> = a.values.iter().map(Self::to_display_string).collect();
                format!("[{}]", items.join(", "))
            }
            Some(Value::KvlistValue(l)) => {
                let items: Vec<_> = l
                    .values
                    .iter()
                    .map(|kv| {
                        let value = kv
                            .value
                            .as_ref()
                            .map(Self::to_display_string)
                            .unwrap_or_default();
                        format!("{}={value}", kv.key)
                    })
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
        }
    }
}

/// `From` for the scalar types, each through its constructor.
macro_rules! from_scalars {
    ($($scalar:ty => $constructor:ident),* $(,)?) => {
        $(
            impl From<$scalar> for AnyValue {
                fn from(value: $scalar) -> Self {
                    Self::$constructor(value)
                }
            }
        )*
    };
}

from_scalars!(&str => string, String => string, bool => bool, i64 => int, f64 => double);

impl KeyValue {
    /// A key with a value.
    ///
    /// ```
    /// use opamp_proto::KeyValue;
    ///
    /// let kv = KeyValue::new("host.name", "web-1");
    /// assert_eq!(kv.value.unwrap().as_str(), Some("web-1"));
    /// ```
    pub fn new(key: impl Into<String>, value: impl Into<AnyValue>) -> Self {
        Self {
            key: key.into(),
            value: Some(value.into()),
        }
    }
}

impl AgentDescription {
    /// A description identified by `service.name` and `service.version`.
    ///
    /// ```
    /// use opamp_proto::{semconv, AgentDescription};
    ///
    /// let description = AgentDescription::for_service("io.example.agent", "1.2.0")
    ///     .with_non_identifying(semconv::OS_TYPE, std::env::consts::OS)
    ///     .with_non_identifying(semconv::HOST_NAME, "web-1");
    /// assert_eq!(
    ///     description.identifying(semconv::SERVICE_NAME).and_then(|v| v.as_str()),
    ///     Some("io.example.agent")
    /// );
    /// assert_eq!(description.non_identifying_attributes.len(), 2);
    /// ```
    pub fn for_service(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self::default()
            .with_identifying(semconv::SERVICE_NAME, name.into())
            .with_identifying(semconv::SERVICE_VERSION, version.into())
    }

    /// Adds (or replaces) an identifying attribute.
    pub fn with_identifying(mut self, key: impl Into<String>, value: impl Into<AnyValue>) -> Self {
        upsert(&mut self.identifying_attributes, KeyValue::new(key, value));
        self
    }

    /// Adds (or replaces) a non-identifying attribute.
    pub fn with_non_identifying(
        mut self,
        key: impl Into<String>,
        value: impl Into<AnyValue>,
    ) -> Self {
        upsert(
            &mut self.non_identifying_attributes,
            KeyValue::new(key, value),
        );
        self
    }

    /// The value of an identifying attribute.
    pub fn identifying(&self, key: &str) -> Option<&AnyValue> {
        find(&self.identifying_attributes, key)
    }

    /// The value of a non-identifying attribute.
    pub fn non_identifying(&self, key: &str) -> Option<&AnyValue> {
        find(&self.non_identifying_attributes, key)
    }
}

fn upsert(list: &mut Vec<KeyValue>, kv: KeyValue) {
    match list.iter_mut().find(|existing| existing.key == kv.key) {
        Some(existing) => *existing = kv,
        None => list.push(kv),
    }
}

fn find<'a>(list: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    list.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_replaces_instead_of_duplicating() {
        let d =
            AgentDescription::for_service("a", "1").with_identifying(semconv::SERVICE_VERSION, "2");
        assert_eq!(d.identifying_attributes.len(), 2);
        assert_eq!(
            d.identifying(semconv::SERVICE_VERSION)
                .and_then(AnyValue::as_str),
            Some("2")
        );
    }

    #[test]
    fn display_strings_cover_every_kind() {
        let v = AnyValue::kvlist([
            KeyValue::new("s", "x"),
            KeyValue::new("n", 3i64),
            KeyValue::new("b", true),
            KeyValue::new(
                "a",
                AnyValue::array([AnyValue::double(1.5), AnyValue::bytes(vec![0xab])]),
            ),
        ]);
        assert_eq!(v.to_display_string(), "{s=x, n=3, b=true, a=[1.5, ab]}");
        assert_eq!(AnyValue::default().to_display_string(), "");
    }
}

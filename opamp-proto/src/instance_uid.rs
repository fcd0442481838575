use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

/// The identity of one agent instance: exactly 16 bytes on the wire
/// (`AgentToServer.instance_uid`, `ServerToAgent.instance_uid`,
/// `AgentIdentification.new_instance_uid`).
///
/// The spec recommends a UUIDv7, which [`InstanceUid::new_v7`] makes. The
/// plain-HTTP transport carries the same value in the `OpAMP-Instance-UID`
/// header as a canonical RFC 4122 string, which [`Display`](fmt::Display) and
/// [`FromStr`] produce and read.
///
/// ```
/// use opamp_proto::InstanceUid;
///
/// let uid: InstanceUid = "0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f".parse()?;
/// assert_eq!(uid.as_bytes()[0], 0x01);
/// assert_eq!(uid.to_string(), "0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f");
///
/// // Bytes from the wire must be exactly 16 long.
/// let err = InstanceUid::try_from(&[0u8; 15][..]).unwrap_err();
/// assert_eq!(err.to_string(), "an instance uid must be 16 bytes, got 15");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceUid([u8; 16]);

impl InstanceUid {
    /// A fresh, time-ordered UUIDv7.
    pub fn new_v7() -> Self {
        Self(*uuid::Uuid::now_v7().as_bytes())
    }

    /// Wraps 16 raw bytes.
    pub const fn from_array(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The value as it goes into a protobuf `bytes` field.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }

    /// The value as a [`uuid::Uuid`].
    pub const fn to_uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.0)
    }

    /// True when every byte is zero: the field was missing from a message.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

/// A value that is not a valid [`InstanceUid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceUidError {
    /// The bytes were not 16 long (UID-03).
    #[error("an instance uid must be 16 bytes, got {0}")]
    WrongLength(usize),
    /// The text was not a UUID.
    #[error("an instance uid string must be a UUID: {0}")]
    NotAUuid(String),
}

impl TryFrom<&[u8]> for InstanceUid {
    type Error = InstanceUidError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 16]>::try_from(bytes)
            .map(Self)
            .map_err(|_| InstanceUidError::WrongLength(bytes.len()))
    }
}

impl TryFrom<&Bytes> for InstanceUid {
    type Error = InstanceUidError;

    fn try_from(bytes: &Bytes) -> Result<Self, Self::Error> {
        Self::try_from(bytes.as_ref())
    }
}

impl From<uuid::Uuid> for InstanceUid {
    fn from(uuid: uuid::Uuid) -> Self {
        Self(uuid.into_bytes())
    }
}

impl From<InstanceUid> for uuid::Uuid {
    fn from(uid: InstanceUid) -> Self {
        uid.to_uuid()
    }
}

impl From<[u8; 16]> for InstanceUid {
    fn from(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl From<InstanceUid> for Bytes {
    fn from(uid: InstanceUid) -> Self {
        uid.to_bytes()
    }
}

impl FromStr for InstanceUid {
    type Err = InstanceUidError;

    /// Accepts the hyphenated canonical form (and, leniently, the simple
    /// 32-hex-digit form and braced/URN forms that `uuid` understands).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(Self::from)
            .map_err(|_| InstanceUidError::NotAUuid(s.chars().take(64).collect()))
    }
}

impl fmt::Display for InstanceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_uuid().hyphenated(), f)
    }
}

impl fmt::Debug for InstanceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceUid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_03_lengths_other_than_16_are_rejected() {
        for len in [0usize, 1, 15, 17, 32] {
            let bytes = vec![7u8; len];
            assert_eq!(
                InstanceUid::try_from(bytes.as_slice()),
                Err(InstanceUidError::WrongLength(len))
            );
        }
        assert!(InstanceUid::try_from(&[7u8; 16][..]).is_ok());
    }

    #[test]
    fn uid_02_new_v7_is_a_version_7_uuid_and_time_ordered() {
        let a = InstanceUid::new_v7();
        let b = InstanceUid::new_v7();
        assert_eq!(a.to_uuid().get_version_num(), 7);
        assert_ne!(a, b);
        // UUIDv7 sorts by creation time (same millisecond keeps a counter).
        assert!(a < b);
    }

    #[test]
    fn http_08_header_form_round_trips() {
        let uid = InstanceUid::from_array([
            0x01, 0x91, 0xe3, 0xa8, 0xc4, 0xb2, 0x7c, 0x3d, 0x8e, 0x9f, 0x0a, 0x1b, 0x2c, 0x3d,
            0x4e, 0x5f,
        ]);
        let text = uid.to_string();
        assert_eq!(text, "0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f");
        assert_eq!(text.parse::<InstanceUid>().unwrap(), uid);
        assert!(matches!(
            "not-a-uid".parse::<InstanceUid>(),
            Err(InstanceUidError::NotAUuid(_))
        ));
    }
}

//! Connection options from endpoints and offers: which transport an
//! endpoint asks for, and the options that offered OpAMP connection settings
//! make on top of the current ones.

use http::{HeaderMap, HeaderName, HeaderValue};
use opamp_proto::{Headers, OpAmpConnectionSettings};
use opamp_transport::{ClientOptions, ClientTlsConfig, ProxyConfig, SystemRoots, TlsVersion};
use url::Url;

use crate::error::ClientError;
use crate::protocol::TransportKind;

/// The transport an endpoint URL asks for.
pub(crate) fn transport_for(endpoint: &Url) -> Result<TransportKind, ClientError> {
    match endpoint.scheme() {
        "ws" | "wss" => Ok(TransportKind::WebSocket),
        "http" | "https" => Ok(TransportKind::PlainHttp),
        other => Err(ClientError::UnsupportedScheme(other.to_owned())),
    }
}

/// The endpoint without credentials, for logs.
pub(crate) fn endpoint_for_log(options: &ClientOptions) -> String {
    let mut url = options.endpoint.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("REDACTED"));
    }
    url.to_string()
}

/// Builds the options for offered OpAMP settings on top of the current
/// ones: unset parts keep the current values (CS-04, AMB-09); a `tls`
/// message replaces the TLS settings (CS-19), a `proxy` message the proxy
/// (CS-21).
pub(crate) fn apply_opamp_settings(
    current: &ClientOptions,
    offer: &OpAmpConnectionSettings,
    allow_insecure: bool,
) -> Result<ClientOptions, String> {
    let mut options = current.clone();
    if !offer.destination_endpoint.is_empty() {
        let endpoint = Url::parse(&offer.destination_endpoint)
            .map_err(|error| format!("invalid destination_endpoint: {error}"))?;
        let new_kind = transport_for(&endpoint).map_err(|error| error.to_string())?;
        let old_kind = transport_for(&current.endpoint).map_err(|error| error.to_string())?;
        if new_kind != old_kind {
            return Err("switching between WebSocket and plain HTTP is not supported".into());
        }
        options.endpoint = endpoint;
    }
    if let Some(headers) = &offer.headers {
        // CS-14: offered headers are sent with every request, replacing
        // configured ones of the same name.
        insert_offered_headers(&mut options.headers, headers, "header")?;
    }
    if let Some(tls) = &offer.tls {
        if tls.insecure_skip_verify && !allow_insecure {
            return Err("insecure_skip_verify offers are not allowed by local policy".into());
        }
        let mut config = ClientTlsConfig::new().with_insecure_skip_verify(tls.insecure_skip_verify);
        if !tls.ca_pem_contents.is_empty() {
            config = config.with_root_ca_pem(tls.ca_pem_contents.as_bytes().to_vec());
        }
        if tls.include_system_ca_certs_pool {
            config = config.with_system_roots(SystemRoots::Native);
        }
        if !tls.min_version.is_empty() {
            let version = TlsVersion::from_opamp(&tls.min_version)
                .ok_or_else(|| format!("unsupported TLS min_version {:?}", tls.min_version))?;
            config = config.with_min_version(version);
        }
        if !tls.max_version.is_empty() {
            let version = TlsVersion::from_opamp(&tls.max_version)
                .ok_or_else(|| format!("unsupported TLS max_version {:?}", tls.max_version))?;
            config = config.with_max_version(version);
        }
        options.tls = config;
    }
    if let Some(certificate) = &offer.certificate
        && !certificate.cert.is_empty()
    {
        if certificate.private_key.is_empty() {
            return Err(
                "certificate offered without a private key; supply it in on_opamp_connection_settings".into(),
            );
        }
        options.tls = options
            .tls
            .clone()
            .with_client_identity_pem(certificate.cert.to_vec(), certificate.private_key.to_vec());
    }
    if let Some(proxy) = &offer.proxy {
        let url = Url::parse(&proxy.url).map_err(|error| format!("invalid proxy url: {error}"))?;
        let mut config = ProxyConfig::new(url);
        if let Some(headers) = &proxy.connect_headers {
            insert_offered_headers(&mut config.headers, headers, "proxy header")?;
        }
        options.proxy = Some(config);
    }
    Ok(options)
}

/// Inserts offered headers into `target`, each replacing the ones of the same
/// name; `what` names them in errors ("header", "proxy header").
fn insert_offered_headers(
    target: &mut HeaderMap,
    offered: &Headers,
    what: &str,
) -> Result<(), String> {
    for header in &offered.headers {
        let name = HeaderName::from_bytes(header.key.as_bytes())
            .map_err(|_| format!("invalid {what} name {:?}", header.key))?;
        let value = HeaderValue::from_str(&header.value)
            .map_err(|_| format!("invalid value for {what} {:?}", header.key))?;
        target.insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use opamp_proto::{Header, TlsCertificate, TlsConnectionSettings};

    use super::*;

    fn current() -> ClientOptions {
        ClientOptions::new(Url::parse("ws://old.example.com/v1/opamp").unwrap())
            .with_header(http::header::USER_AGENT, HeaderValue::from_static("agent"))
    }

    #[test]
    fn cs_04_unset_parts_keep_current_values() {
        let options =
            apply_opamp_settings(&current(), &OpAmpConnectionSettings::default(), false).unwrap();
        assert_eq!(options.endpoint.as_str(), "ws://old.example.com/v1/opamp");
        assert_eq!(options.headers[http::header::USER_AGENT], "agent");
    }

    #[test]
    fn cs_02_cs_14_endpoint_and_headers_are_applied() {
        let offer = OpAmpConnectionSettings {
            destination_endpoint: "wss://new.example.com/v1/opamp".into(),
            headers: Some(Headers {
                headers: vec![Header {
                    key: "Authorization".into(),
                    value: "Bearer t".into(),
                }],
            }),
            ..Default::default()
        };
        let options = apply_opamp_settings(&current(), &offer, false).unwrap();
        assert_eq!(options.endpoint.as_str(), "wss://new.example.com/v1/opamp");
        assert_eq!(options.headers[http::header::AUTHORIZATION], "Bearer t");
        assert_eq!(options.headers[http::header::USER_AGENT], "agent");
    }

    #[test]
    fn bad_offers_are_refused() {
        let cases = [
            OpAmpConnectionSettings {
                destination_endpoint: "not a url".into(),
                ..Default::default()
            },
            OpAmpConnectionSettings {
                destination_endpoint: "http://x/v1/opamp".into(),
                ..Default::default()
            },
            OpAmpConnectionSettings {
                headers: Some(Headers {
                    headers: vec![Header {
                        key: "bad header".into(),
                        value: "v".into(),
                    }],
                }),
                ..Default::default()
            },
            // SEC-13: insecure offers are off by default.
            OpAmpConnectionSettings {
                tls: Some(TlsConnectionSettings {
                    insecure_skip_verify: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
            OpAmpConnectionSettings {
                tls: Some(TlsConnectionSettings {
                    min_version: "1.0".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            // CS-31: a CSR-issued certificate needs the agent's key.
            OpAmpConnectionSettings {
                certificate: Some(TlsCertificate {
                    cert: Bytes::from_static(b"CERT"),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        for offer in cases {
            assert!(
                apply_opamp_settings(&current(), &offer, false).is_err(),
                "{offer:?}"
            );
        }
    }

    #[test]
    fn sec_13_insecure_offer_allowed_when_configured() {
        let offer = OpAmpConnectionSettings {
            tls: Some(TlsConnectionSettings {
                insecure_skip_verify: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = apply_opamp_settings(&current(), &offer, true).unwrap();
        assert!(options.tls.insecure_skip_verify());
    }
}

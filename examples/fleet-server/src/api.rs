//! The JSON API, the server-sent event stream and the page (see API.md).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path as FsPath, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, Multipart, Path, Query, RawQuery, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;
use opamp_proto::{
    AgentConfigMap, AgentConfigObject, CustomMessage, DownloadableFile, InstanceUid,
    PackageAvailable, PackageType, config_hash, message_hash,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use super::agent_query::{self, AgentQuery, ConfigState, Health, MAX_LIMIT};
use super::assets;
use super::error::ApiError;
use super::fleet::{Fleet, UiEvent};
use super::store::Group;
use super::view;

/// Largest config file accepted through the API.
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;
/// Largest package file accepted by a multipart upload.
const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;

type Shared = State<Arc<Fleet>>;

pub(crate) fn router(fleet: Arc<Fleet>) -> Router {
    let uploads = Router::new()
        .route("/api/agents/{uid}/packages", post(offer_package))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES));
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::asset))
        .route("/api/server", get(server_info))
        .route("/api/agents", get(list_agents))
        .route("/api/agents/{uid}", get(agent_detail).delete(forget_agent))
        .route(
            "/api/agents/{uid}/config",
            put(put_agent_config).delete(delete_agent_config),
        )
        .route("/api/agents/{uid}/restart", post(restart))
        .route(
            "/api/agents/{uid}/packages/{name}",
            axum::routing::delete(withdraw_package),
        )
        .route("/api/agents/{uid}/custom-message", post(custom_message))
        .route("/api/agents/{uid}/heartbeat", put(heartbeat))
        .route(
            "/api/agents/{uid}/rotate-certificate",
            post(rotate_certificate),
        )
        .route("/api/config", get(get_config))
        .route(
            "/api/config/default",
            put(put_default_config).delete(delete_default_config),
        )
        .route(
            "/api/config/groups/{name}",
            put(put_group).delete(delete_group),
        )
        .route("/api/packages", get(list_packages))
        .route("/api/events", get(events))
        .layer(DefaultBodyLimit::max(MAX_CONFIG_BYTES))
        .merge(uploads)
        .fallback(not_found)
        .with_state(fleet)
}

/// Serves the package files agents download (`GET /packages/{file}`, with
/// range requests so downloads can resume, PKG-07).
pub(crate) fn downloads_router(packages_dir: &FsPath) -> Router {
    Router::new().nest_service(
        "/packages",
        tower_http::services::ServeDir::new(packages_dir),
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

fn parse_uid(text: &str) -> Result<InstanceUid, ApiError> {
    InstanceUid::from_str(text)
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not an instance uid (UUID)")))
}

/// The `{uid}` of an agent's route (its only path parameter), parsed.
struct AgentUid(InstanceUid);

impl<S: Send + Sync> FromRequestParts<S> for AgentUid {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(uid) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
        parse_uid(&uid).map(Self)
    }
}

/// A JSON request body; a malformed one is a `bad_request` like any other.
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state)
            .await
            .map_err(json_error)?;
        Ok(Self(value))
    }
}

// ---- agents ----

async fn server_info(State(fleet): Shared) -> Json<serde_json::Value> {
    let options = &fleet.options;
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "opamp_websocket_endpoint": options.websocket_endpoint,
        "opamp_http_endpoint": options.http_endpoint,
        "agent_token_required": options.agent_token.is_some(),
        "can_rotate_certificates": options.client_ca.is_some(),
        "otlp_endpoint": options.otlp_endpoint,
        "packages_dir": options.packages_dir.display().to_string(),
        "download_base_url": options.download_base_url,
    }))
}

/// `GET /api/agents` parameters; any of them selects the paged form.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
    /// `connected` or `disconnected`.
    connection: Option<String>,
    /// `none`, `pending`, `applying`, `applied` or `failed`.
    config: Option<String>,
    /// `healthy`, `unhealthy` or `unknown`.
    health: Option<String>,
    /// `key=value`.
    attribute: Option<String>,
    /// Text in the uid or a searched attribute.
    q: Option<String>,
}

fn invalid(name: &str, value: &str, allowed: &str) -> ApiError {
    ApiError::BadRequest(format!("{name}={value:?}: expected {allowed}"))
}

impl ListParams {
    fn into_query(self) -> Result<AgentQuery, ApiError> {
        let mut query = AgentQuery::default();
        if let Some(limit) = self.limit {
            query.limit = limit
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| invalid("limit", &limit, &format!("1 to {MAX_LIMIT}")))?;
        }
        if let Some(cursor) = self.cursor.filter(|cursor| !cursor.is_empty()) {
            query.after =
                Some(agent_query::decode_cursor(&cursor).ok_or(ApiError::BadCursor(cursor))?);
        }
        if let Some(connection) = self.connection.filter(|value| !value.is_empty()) {
            query.connected = Some(match connection.as_str() {
                "connected" => true,
                "disconnected" => false,
                _ => {
                    return Err(invalid(
                        "connection",
                        &connection,
                        "connected or disconnected",
                    ));
                }
            });
        }
        if let Some(config) = self.config.filter(|value| !value.is_empty()) {
            query.config = Some(ConfigState::parse(&config).ok_or_else(|| {
                invalid(
                    "config",
                    &config,
                    "none, pending, applying, applied or failed",
                )
            })?);
        }
        if let Some(health) = self.health.filter(|value| !value.is_empty()) {
            query.health = Some(
                Health::parse(&health)
                    .ok_or_else(|| invalid("health", &health, "healthy, unhealthy or unknown"))?,
            );
        }
        if let Some(attribute) = self.attribute.filter(|value| !value.is_empty()) {
            let (key, value) = attribute
                .split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .ok_or_else(|| invalid("attribute", &attribute, "key=value"))?;
            query.attribute = Some((key.to_owned(), value.to_owned()));
        }
        query.text = self
            .q
            .map(|text| text.trim().to_lowercase())
            .filter(|text| !text.is_empty());
        Ok(query)
    }
}

async fn list_agents(
    State(fleet): Shared,
    RawQuery(raw): RawQuery,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    if raw.as_deref().is_none_or(str::is_empty) {
        // The original form: every agent, as an array. Kept for scripts;
        // large fleets should page.
        return Ok(Json(fleet.list().await?).into_response());
    }
    let Query(params) = params.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let query = params.into_query()?;
    let limit = query.limit;
    let (agents, page) = fleet.page(query).await?;
    Ok(Json(json!({
        "agents": agents,
        "next": page.next.map(agent_query::encode_cursor),
        "limit": limit,
        "counts": page.counts,
    }))
    .into_response())
}

async fn agent_detail(State(fleet): Shared, AgentUid(uid): AgentUid) -> Result<Response, ApiError> {
    Ok(Json(fleet.detail(uid).await?).into_response())
}

async fn forget_agent(State(fleet): Shared, AgentUid(uid): AgentUid) -> Result<Response, ApiError> {
    fleet.forget(uid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct FileQuery {
    #[serde(default)]
    file: String,
    /// The object's role (spec v0.20.0), empty when not given.
    #[serde(default)]
    role: String,
}

/// One config object from a request body; the `Content-Type` header becomes
/// its content type, the `file` and `role` query parameters its key and role.
fn single_file_config(query: FileQuery, headers: &HeaderMap, body: Bytes) -> AgentConfigMap {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut config = AgentConfigMap::default();
    config.config_map.insert(
        query.file,
        AgentConfigObject {
            body,
            content_type,
            role: query.role,
        },
    );
    config
}

/// A request's body as a config of one object (see [`single_file_config`]).
struct SingleFile(AgentConfigMap);

impl<S: Send + Sync> FromRequest<S> for SingleFile {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Query(query) = Query::<FileQuery>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let headers = parts.headers.clone();
        let request = axum::extract::Request::from_parts(parts, body);
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self(single_file_config(query, &headers, body)))
    }
}

/// The answer to a config set for agents to receive: 202 and its hash.
fn config_accepted(config: &AgentConfigMap) -> Response {
    let hash = config_hash(config);
    (
        StatusCode::ACCEPTED,
        Json(json!({ "config_hash": hex::encode(hash) })),
    )
        .into_response()
}

async fn put_agent_config(
    State(fleet): Shared,
    AgentUid(uid): AgentUid,
    SingleFile(config): SingleFile,
) -> Result<Response, ApiError> {
    let accepted = config_accepted(&config);
    fleet.set_agent_config(uid, Some(config)).await?;
    Ok(accepted)
}

async fn delete_agent_config(
    State(fleet): Shared,
    AgentUid(uid): AgentUid,
) -> Result<Response, ApiError> {
    let hash = fleet.set_agent_config(uid, None).await?;
    Ok(Json(json!({ "config_hash": hash.map(hex::encode) })).into_response())
}

async fn restart(State(fleet): Shared, AgentUid(uid): AgentUid) -> Result<Response, ApiError> {
    fleet.restart(uid).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

#[derive(Deserialize)]
struct CustomMessageRequest {
    capability: String,
    #[serde(rename = "type")]
    kind: String,
    /// The payload as text.
    #[serde(default)]
    data: Option<String>,
    /// The payload as base64, for binary data.
    #[serde(default)]
    data_base64: Option<String>,
}

async fn custom_message(
    State(fleet): Shared,
    AgentUid(uid): AgentUid,
    Body(request): Body<CustomMessageRequest>,
) -> Result<Response, ApiError> {
    let data = match (request.data, request.data_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either data or data_base64, not both".into(),
            ));
        }
        (Some(text), None) => Bytes::from(text),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Bytes::from)
            .map_err(|error| ApiError::BadRequest(format!("data_base64: {error}")))?,
        (None, None) => Bytes::new(),
    };
    if request.capability.is_empty() || request.kind.is_empty() {
        return Err(ApiError::BadRequest(
            "capability and type are required".into(),
        ));
    }
    let message = CustomMessage {
        capability: request.capability,
        r#type: request.kind,
        data,
    };
    fleet.custom_message(uid, message).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

#[derive(Deserialize)]
struct HeartbeatRequest {
    heartbeat_interval_seconds: u64,
}

async fn heartbeat(
    State(fleet): Shared,
    AgentUid(uid): AgentUid,
    Body(request): Body<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    if request.heartbeat_interval_seconds > 24 * 3600 {
        return Err(ApiError::BadRequest(
            "heartbeat_interval_seconds is at most 86400".into(),
        ));
    }
    fleet
        .set_heartbeat(uid, request.heartbeat_interval_seconds)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

async fn rotate_certificate(
    State(fleet): Shared,
    AgentUid(uid): AgentUid,
) -> Result<Response, ApiError> {
    fleet.rotate_certificate(uid).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

// ---- packages ----

#[derive(Deserialize, Default)]
struct PackageRequest {
    /// A file in the packages directory.
    file: String,
    /// The package name; defaults to the file name without extension.
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
    /// `top_level` (default) or `addon`.
    #[serde(default, rename = "type")]
    kind: String,
    /// Expected sha256 (hex); the request fails if the file differs.
    #[serde(default)]
    sha256: String,
    /// Detached signature of the file, base64 (PKG-09).
    #[serde(default)]
    signature_base64: String,
}

async fn offer_package(
    State(fleet): Shared,
    AgentUid(uid): AgentUid,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    let package_request = if is_multipart {
        // Check the agent before storing an upload for it.
        fleet.record(uid).await?;
        let multipart = <Multipart as axum::extract::FromRequest<()>>::from_request(request, &())
            .await
            .map_err(|error| ApiError::BadRequest(error.to_string()))?;
        receive_upload(&fleet.options.packages_dir, multipart).await?
    } else {
        let Json(parsed) =
            <Json<PackageRequest> as axum::extract::FromRequest<()>>::from_request(request, &())
                .await
                .map_err(json_error)?;
        parsed
    };
    offer_named_file(&fleet, uid, package_request).await
}

async fn offer_named_file(
    fleet: &Fleet,
    uid: InstanceUid,
    request: PackageRequest,
) -> Result<Response, ApiError> {
    let path = package_path(&fleet.options.packages_dir, &request.file)?;
    let sha256 = sha256_file(&path).await?;
    if !request.sha256.is_empty() && !request.sha256.eq_ignore_ascii_case(&hex::encode(sha256)) {
        return Err(ApiError::BadRequest(format!(
            "{} has sha256 {}, not {}",
            request.file,
            hex::encode(sha256),
            request.sha256
        )));
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(&request.signature_base64)
        .map_err(|error| ApiError::BadRequest(format!("signature_base64: {error}")))?;
    let kind = match request.kind.as_str() {
        "" | "top_level" => PackageType::TopLevel,
        "addon" => PackageType::Addon,
        other => {
            return Err(ApiError::BadRequest(format!(
                "type {other:?} is not top_level or addon"
            )));
        }
    };
    let name = if request.name.is_empty() {
        default_package_name(&request.file)
    } else {
        request.name
    };
    let download_url = format!(
        "{}/packages/{}",
        fleet.options.download_base_url.trim_end_matches('/'),
        url_path_segment(&request.file)
    );
    let mut package = PackageAvailable {
        r#type: kind as i32,
        version: request.version,
        file: Some(DownloadableFile {
            download_url: download_url.clone(),
            content_hash: Bytes::copy_from_slice(&sha256),
            signature: signature.into(),
            headers: None,
        }),
        hash: Bytes::new(),
    };
    // PKG-10/11: the server computes the package hash.
    package.hash = message_hash(&package);
    let all_packages_hash = fleet.offer_package(uid, name, package).await?;
    let body = json!({
        "all_packages_hash": hex::encode(all_packages_hash),
        "sha256": hex::encode(sha256),
        "download_url": download_url,
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn receive_upload(
    dir: &FsPath,
    mut multipart: Multipart,
) -> Result<PackageRequest, ApiError> {
    let mut request = PackageRequest::default();
    let bad =
        |error: axum::extract::multipart::MultipartError| ApiError::BadRequest(error.to_string());
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let field_name = field.name().unwrap_or_default().to_owned();
        match field_name.as_str() {
            "file" => {
                let file_name = field.file_name().unwrap_or_default().to_owned();
                let path = package_path_for_new(dir, &file_name)?;
                store_upload(dir, &path, field).await?;
                request.file = file_name;
            }
            "name" => request.name = field.text().await.map_err(bad)?,
            "version" => request.version = field.text().await.map_err(bad)?,
            "type" => request.kind = field.text().await.map_err(bad)?,
            "sha256" => request.sha256 = field.text().await.map_err(bad)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unexpected form field {other:?}"
                )));
            }
        }
    }
    if request.file.is_empty() {
        return Err(ApiError::BadRequest("the form has no file field".into()));
    }
    Ok(request)
}

/// Streams an uploaded file to disk (through a hidden temporary file, so a
/// failed upload never replaces a good file).
async fn store_upload(
    dir: &FsPath,
    path: &FsPath,
    mut field: axum::extract::multipart::Field<'_>,
) -> Result<(), ApiError> {
    use tokio::io::AsyncWriteExt as _;
    let internal =
        |error: std::io::Error| ApiError::Internal(format!("cannot store upload: {error}"));
    tokio::fs::create_dir_all(dir).await.map_err(internal)?;
    let partial = dir.join(format!(".upload-{}", uuid::Uuid::now_v7()));
    let result = async {
        let mut file = tokio::fs::File::create(&partial).await.map_err(internal)?;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|error| ApiError::BadRequest(error.to_string()))?
        {
            file.write_all(&chunk).await.map_err(internal)?;
        }
        file.flush().await.map_err(internal)?;
        tokio::fs::rename(&partial, path).await.map_err(internal)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

async fn withdraw_package(
    State(fleet): Shared,
    Path((uid, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    fleet.withdraw_package(parse_uid(&uid)?, &name).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

/// The file name without a package-like extension.
fn default_package_name(file: &str) -> String {
    const EXTENSIONS: [&str; 7] = [".tar.gz", ".tgz", ".tar", ".zip", ".gz", ".deb", ".rpm"];
    EXTENSIONS
        .iter()
        .find_map(|extension| file.strip_suffix(extension))
        .filter(|stem| !stem.is_empty())
        .unwrap_or(file)
        .to_owned()
}

/// A plain file name: no directories, no hidden files.
fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
}

fn package_path_for_new(dir: &FsPath, name: &str) -> Result<PathBuf, ApiError> {
    if !valid_file_name(name) {
        return Err(ApiError::BadRequest(format!(
            "package file name {name:?} must be letters, digits, '.', '-', '_' or '+'"
        )));
    }
    Ok(dir.join(name))
}

fn package_path(dir: &FsPath, name: &str) -> Result<PathBuf, ApiError> {
    let path = package_path_for_new(dir, name)?;
    if !path.is_file() {
        return Err(ApiError::NotFound(format!(
            "no package file {name:?} in {}",
            dir.display()
        )));
    }
    Ok(path)
}

fn url_path_segment(name: &str) -> String {
    // valid_file_name leaves only '+' needing escapes in a path segment.
    name.replace('+', "%2B")
}

async fn sha256_file(path: &FsPath) -> Result<[u8; 32], ApiError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|error| ApiError::Internal(format!("cannot open {}: {error}", path.display())))?;
    let mut digest = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer).await.map_err(|error| {
            ApiError::Internal(format!("cannot read {}: {error}", path.display()))
        })?;
        if read == 0 {
            break;
        }
        digest.update(&buffer[..read]);
    }
    Ok(digest.finalize().into())
}

async fn list_packages(State(fleet): Shared) -> Result<Response, ApiError> {
    let dir = fleet.options.packages_dir.clone();
    let mut files = Vec::new();
    let mut entries = match tokio::fs::read_dir(&dir).await {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Json(files).into_response());
        }
        Err(error) => return Err(ApiError::Internal(error.to_string())),
    };
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(metadata) = entry.metadata().await else {
            continue;
        };
        if metadata.is_file() && valid_file_name(&name) {
            let sha256 = sha256_file(&entry.path()).await?;
            files.push(
                json!({ "file": name, "size": metadata.len(), "sha256": hex::encode(sha256) }),
            );
        }
    }
    files.sort_by(|a, b| a["file"].as_str().cmp(&b["file"].as_str()));
    Ok(Json(files).into_response())
}

// ---- fleet config ----

fn config_json(config: &AgentConfigMap) -> serde_json::Value {
    json!({
        "config_hash": hex::encode(config_hash(config)),
        "files": view::file_views(config),
    })
}

async fn get_config(State(fleet): Shared) -> Result<Response, ApiError> {
    let default = fleet.store.default_config().await?;
    let groups: BTreeMap<String, serde_json::Value> = fleet
        .groups_with_counts()
        .await?
        .into_iter()
        .map(|(name, (group, count))| {
            let value = json!({
                "selector": group.selector,
                "config": config_json(&group.config),
                "matching_agents": count,
            });
            (name, value)
        })
        .collect();
    Ok(
        Json(json!({ "default": default.as_ref().map(config_json), "groups": groups }))
            .into_response(),
    )
}

async fn put_default_config(
    State(fleet): Shared,
    SingleFile(config): SingleFile,
) -> Result<Response, ApiError> {
    let accepted = config_accepted(&config);
    fleet.set_default_config(Some(config)).await?;
    Ok(accepted)
}

async fn delete_default_config(State(fleet): Shared) -> Result<Response, ApiError> {
    fleet.set_default_config(None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct GroupRequest {
    selector: BTreeMap<String, String>,
    config: ConfigRequest,
}

#[derive(Deserialize)]
struct ConfigRequest {
    files: BTreeMap<String, FileRequest>,
}

#[derive(Deserialize)]
struct FileRequest {
    #[serde(default)]
    content_type: String,
    body: String,
    /// `utf-8` (default) or `base64`.
    #[serde(default)]
    encoding: String,
    /// What the object is for the agent; empty when not given.
    #[serde(default)]
    role: String,
}

fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

async fn put_group(
    State(fleet): Shared,
    Path(name): Path<String>,
    body: Result<Json<GroupRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    if !valid_group_name(&name) {
        return Err(ApiError::BadRequest(
            "group names are letters, digits, '.', '-' and '_'".into(),
        ));
    }
    let Json(request) = body.map_err(json_error)?;
    if request.selector.is_empty() {
        return Err(ApiError::BadRequest(
            "the selector needs at least one attribute; use the default config for every agent"
                .into(),
        ));
    }
    if request.config.files.is_empty() {
        return Err(ApiError::BadRequest(
            "the config needs at least one file".into(),
        ));
    }
    let mut config = AgentConfigMap::default();
    for (file, content) in request.config.files {
        let body = match content.encoding.as_str() {
            "" | "utf-8" => Bytes::from(content.body),
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(content.body)
                .map(Bytes::from)
                .map_err(|error| ApiError::BadRequest(format!("file {file:?}: {error}")))?,
            other => return Err(ApiError::BadRequest(format!("unknown encoding {other:?}"))),
        };
        config.config_map.insert(
            file,
            AgentConfigObject {
                body,
                content_type: content.content_type,
                role: content.role,
            },
        );
    }
    let hash = config_hash(&config);
    fleet
        .put_group(
            name.clone(),
            Group {
                selector: request.selector,
                config,
            },
        )
        .await?;
    let matching = fleet
        .groups_with_counts()
        .await?
        .get(&name)
        .map_or(0, |(_, count)| *count);
    Ok(
        Json(json!({ "config_hash": hex::encode(hash), "matching_agents": matching }))
            .into_response(),
    )
}

async fn delete_group(
    State(fleet): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if fleet.remove_group(name.clone()).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("no group {name:?}")))
    }
}

fn json_error(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

// ---- live updates ----

async fn events(State(fleet): Shared) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = fleet.subscribe_ui();
    let shutdown = fleet.shutdown_signal();
    let stream = futures_util::stream::unfold(
        (receiver, shutdown),
        |(mut receiver, mut shutdown)| async move {
            loop {
                let next = tokio::select! {
                    next = receiver.recv() => next,
                    // Open streams would otherwise hold graceful shutdown forever.
                    _ = shutdown.wait_for(|stopping| *stopping) => return None,
                };
                let event = match next {
                    Ok(UiEvent::Agent(summary)) => match serde_json::to_string(&summary) {
                        Ok(data) => Event::default().event("agent").data(data),
                        Err(error) => {
                            tracing::warn!(%error, "cannot encode agent for the page");
                            continue;
                        }
                    },
                    Ok(UiEvent::Removed(uid)) => Event::default()
                        .event("removed")
                        .data(json!({ "instance_uid": uid.to_string() }).to_string()),
                    Ok(UiEvent::Config) => Event::default().event("config").data("{}"),
                    Ok(UiEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        Event::default().event("resync").data("{}")
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(event), (receiver, shutdown)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

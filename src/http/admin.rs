//! The admin HTTP API (feature `admin-api`): products and devices for back ends that are not
//! written in Rust, as Alibaba's OpenAPI actions offer them (CreateProduct, RegisterDevice,
//! BatchRegisterDevice, QueryDeviceDetail, DisableThing, EnableThing, ResetThing,
//! DeleteDevice, UpdateProduct…). Each operation's `operationId` is the Alibaba action it
//! corresponds to; the document is served at `/admin/openapi.json` ([`AdminApi`]).
//!
//! Every request needs `Authorization: Bearer TOKEN` ([`AdminToken`], compared in constant
//! time; 401 otherwise). Every rule is the service layer's ([`crate::service::Admin`], and
//! [`Services::apply_operator_event`] for disable, enable, reset and delete, which also ends
//! the device's sessions): the CLI and this API cannot disagree. Secrets appear only in the
//! replies that create or replace them (CreateProduct, RegisterDevice, BatchRegisterDevice,
//! ResetThing). Errors are JSON `{"code", "message"}`; messages name fields, never values.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};
use zeroize::Zeroize;

use super::{Services, UnreadBody};
use crate::error::ErrorChain;
use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DynamicRegistration, Event};
use crate::service::{
    Admin, AdminError, BatchRefusal, DeviceView, ImportError, ImportSummary, IssuedDeviceView,
    LimitView, MAX_BATCH_DEVICES, MAX_IMPORT_BYTES, ProductUpdate, ProductView,
    parse_device_import, parse_product_import,
};
use crate::store::{Store, StoreError};

/// The most items a list returns in one page (`pageSize`).
pub const MAX_PAGE_SIZE: u32 = 200;

/// The items a list returns when `pageSize` is not given.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// The bearer token of the admin API: only its SHA-256 digest is kept (zeroized on drop);
/// a request's token is hashed and compared with it in constant time, so that neither its
/// bytes nor its length leak through timing. `Debug` shows nothing of it.
pub struct AdminToken {
    digest: [u8; 32],
}

impl Drop for AdminToken {
    fn drop(&mut self) {
        self.digest.zeroize();
    }
}

/// Why a token was refused as the admin token ([`AdminToken::new`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "the admin token must be {min} to {max} characters of A-Z a-z 0-9 - . _ ~ + / (then = \
     padding), as RFC 6750 bearer tokens are",
    min = AdminToken::MIN_LEN,
    max = AdminToken::MAX_LEN
)]
#[non_exhaustive]
pub struct AdminTokenError;

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// The shortest token accepted, `=` padding not counted (a guessable token would guard
    /// every device's secret).
    pub const MIN_LEN: usize = 16;
    /// The longest token accepted.
    pub const MAX_LEN: usize = 1024;

    /// `token` as the admin token: [`AdminToken::MIN_LEN`] to [`AdminToken::MAX_LEN`]
    /// characters of RFC 6750's `b64token` (`A-Z a-z 0-9 - . _ ~ + /`, then `=`), so that it
    /// travels in an `Authorization` header unchanged. Generate one with, for example,
    /// `openssl rand -hex 32`.
    ///
    /// # Errors
    /// [`AdminTokenError`] (which never shows the token).
    pub fn new(token: &str) -> Result<Self, AdminTokenError> {
        let body = token.trim_end_matches('=');
        // The padding adds nothing to guess: the minimum counts what comes before it.
        let valid = body.len() >= Self::MIN_LEN
            && token.len() <= Self::MAX_LEN
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if !valid {
            return Err(AdminTokenError);
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `headers` carry this token: exactly one `Authorization` header, scheme
    /// `Bearer` (any case), and the token.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let Some((scheme, token)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        scheme.eq_ignore_ascii_case("bearer") && bool::from(presented.ct_eq(&self.digest))
    }

    /// `Ok` when `headers` carry this token ([`AdminToken::admits`]), else the 401 reply:
    /// the check the admin router runs, and the one its listener runs before reading a body
    /// ([`crate::listener::HttpListener::admit`]).
    ///
    /// # Errors
    /// The 401 reply, with `WWW-Authenticate: Bearer`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        if self.admits(headers) {
            return Ok(());
        }
        let mut reply = refusal(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this API needs Authorization: Bearer and the admin token".into(),
        );
        reply.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"iotauth-admin\""),
        );
        Err(Box::new(reply))
    }
}

/// The admin API's OpenAPI 3 document (`AdminApi::openapi()`), as served at
/// `/admin/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "iotauth admin API",
        description = "Products and devices of an iotauth store, by Alibaba Cloud IoT \
                       Platform's OpenAPI actions (each operationId is the action). Every \
                       request needs Authorization: Bearer and the admin token."
    ),
    paths(
        query_product_list,
        create_product,
        query_product,
        update_product,
        import_products,
        query_device,
        register_device,
        batch_register_device,
        import_devices,
        query_device_detail,
        delete_device,
        disable_thing,
        enable_thing,
        reset_thing,
        openapi_document,
    ),
    components(schemas(
        ProductView,
        LimitView,
        DeviceView,
        IssuedDeviceView,
        ImportSummary,
        ProductPage,
        DevicePage,
        ErrorBody,
        ErrorCode,
        CreateProductRequest,
        UpdateProductRequest,
        RegisterDeviceRequest,
        BatchRegisterDeviceRequest,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct AdminApi;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// The routes of [`AdminApi`], over `services`, each behind `token`.
pub fn admin_router(services: Arc<Services>, token: Arc<AdminToken>) -> Router {
    Router::new()
        .route("/admin/openapi.json", get(openapi_document))
        .route(
            "/admin/products",
            get(query_product_list).post(create_product),
        )
        .route(
            "/admin/products/{product_key}",
            get(query_product).patch(update_product),
        )
        .route("/admin/product-imports", post(import_products))
        .route(
            "/admin/products/{product_key}/devices",
            get(query_device).post(register_device),
        )
        .route(
            "/admin/products/{product_key}/device-batches",
            post(batch_register_device),
        )
        .route("/admin/device-imports", post(import_devices))
        .route(
            "/admin/products/{product_key}/devices/{device_name}",
            get(query_device_detail).delete(delete_device),
        )
        .route(
            "/admin/products/{product_key}/devices/{device_name}/disable",
            post(disable_thing),
        )
        .route(
            "/admin/products/{product_key}/devices/{device_name}/enable",
            post(enable_thing),
        )
        .route(
            "/admin/products/{product_key}/devices/{device_name}/reset",
            post(reset_thing),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn(refuse_unread_body))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let token = token.clone();
                async move {
                    match token.check(request.headers()) {
                        Ok(()) => next.run(request).await,
                        Err(reply) => *reply,
                    }
                }
            },
        ))
        .layer(axum::middleware::map_response(no_store))
        .layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES))
        .with_state(services)
}

type Shared = State<Arc<Services>>;

/// What kind of error a reply is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No valid admin token (401).
    Unauthorized,
    /// A parameter or body is malformed or out of range (400), or the body was not read
    /// (408, 413).
    InvalidParameter,
    /// The body is not of a type this operation reads (415).
    UnsupportedMediaType,
    /// No such product, device or route (404).
    NotFound,
    /// The route does not take the method (405).
    MethodNotAllowed,
    /// It exists already, or exists with another secret, or the lifecycle refuses (409).
    Conflict,
    /// The store failed (503): try again.
    ServiceUnavailable,
}

/// An error reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What kind.
    code: ErrorCode,
    /// Why, naming fields, never their values.
    message: String,
}

fn refusal(status: StatusCode, code: ErrorCode, message: String) -> Response {
    (status, Json(ErrorBody { code, message })).into_response()
}

/// An operation's failure, as its reply.
struct Failure(Box<Response>);

impl Failure {
    fn of(reply: Response) -> Self {
        Self(Box::new(reply))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        *self.0
    }
}

type Reply<T> = Result<T, Failure>;

fn invalid(message: impl Into<String>) -> Failure {
    Failure::of(refusal(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidParameter,
        message.into(),
    ))
}

/// The status and code of an operation's failure; the store's and the random source's
/// failures are logged here (their causes are the operator's to read, not the client's).
fn classify(e: &AdminError) -> (StatusCode, ErrorCode) {
    match e {
        AdminError::Store(StoreError::NotFound { .. }) => {
            (StatusCode::NOT_FOUND, ErrorCode::NotFound)
        }
        AdminError::Store(
            StoreError::AlreadyExists { .. }
            | StoreError::QuotaReached
            | StoreError::Precondition { .. },
        )
        | AdminError::Conflict { .. }
        | AdminError::Transition(_)
        | AdminError::InBatch {
            reason: BatchRefusal::Taken,
            ..
        } => (StatusCode::CONFLICT, ErrorCode::Conflict),
        AdminError::InvalidName
        | AdminError::NotAnOperatorEvent { .. }
        | AdminError::Limit(_)
        | AdminError::BatchSize { .. }
        | AdminError::InBatch { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidParameter),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServiceUnavailable,
        ),
    }
}

/// What a 503 says: the failure's kind, never its cause.
fn unavailable(e: &AdminError) -> String {
    tracing::warn!(error = %ErrorChain(e), "admin API: the operation failed");
    match e {
        AdminError::Store(store) => format!(
            "the store failed ({})",
            store
                .failure_kind()
                .map_or_else(|| "unavailable".to_owned(), |kind| kind.to_string())
        ),
        AdminError::Entropy(_) => "the random source failed".to_owned(),
        _ => "the operation failed".to_owned(),
    }
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        let (status, code) = classify(&e);
        let message = match status {
            StatusCode::SERVICE_UNAVAILABLE => unavailable(&e),
            _ => ErrorChain(&e).to_string(),
        };
        Failure::of(refusal(status, code, message))
    }
}

impl From<ImportError> for Failure {
    fn from(e: ImportError) -> Self {
        let (status, code) = match &e {
            ImportError::Store { source, .. } | ImportError::Write { source } => classify(source),
            ImportError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::InvalidParameter),
            _ => (StatusCode::BAD_REQUEST, ErrorCode::InvalidParameter),
        };
        let message = match (&e, status) {
            (
                ImportError::Store { source, .. } | ImportError::Write { source },
                StatusCode::SERVICE_UNAVAILABLE,
            ) => unavailable(source),
            _ => ErrorChain(&e).to_string(),
        };
        Failure::of(refusal(status, code, message))
    }
}

/// A JSON body of `T`, refused naming the field at fault (serde's own messages quote the
/// values they refuse, so only the field's path and the kind of fault are said).
fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Reply<T> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Failure::of(refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the body must be application/json".into(),
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let message = e.inner().to_string();
        // serde names an unknown or missing field (the client's own key, not a value).
        if (message.starts_with("unknown field") || message.starts_with("missing field"))
            && message.len() <= 200
        {
            return invalid(message);
        }
        let fault = match e.inner().classify() {
            serde_json::error::Category::Data => "has the wrong type, value or range",
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "is not JSON",
            serde_json::error::Category::Io => "could not be read",
        };
        match e.path().to_string().as_str() {
            "." => invalid(format!("the body {fault}")),
            path => invalid(format!("{path} {fault}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|_| invalid("the body holds more than one JSON value"))?;
    Ok(value)
}

impl From<PathRejection> for Failure {
    fn from(_: PathRejection) -> Self {
        invalid("the path's parameters are not text")
    }
}

impl From<QueryRejection> for Failure {
    fn from(_: QueryRejection) -> Self {
        invalid("the query takes currentPage and pageSize only, as whole numbers")
    }
}

/// A product key from the path.
fn product_key(text: &str) -> Reply<ProductKey> {
    // The parser's error names the field.
    ProductKey::new(text).map_err(|e| invalid(ErrorChain(&e).to_string()))
}

/// A device name from the path or a body.
fn device_name(text: &str) -> Reply<DeviceName> {
    DeviceName::new(text).map_err(|e| invalid(ErrorChain(&e).to_string()))
}

fn admin(services: &Services) -> &Admin<Arc<dyn Store>> {
    services.admin()
}

/// A product's path: `/admin/products/{product_key}…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ProductPath {
    /// `ProductKey`: 1–32 ASCII letters or digits.
    #[param(pattern = "^[A-Za-z0-9]{1,32}$")]
    product_key: String,
}

/// A device's path: `/admin/products/{product_key}/devices/{device_name}…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct DevicePath {
    /// `ProductKey`: 1–32 ASCII letters or digits.
    #[param(pattern = "^[A-Za-z0-9]{1,32}$")]
    product_key: String,
    /// `DeviceName`: 4–32 of `A-Za-z0-9_-.@:`.
    #[param(pattern = "^[A-Za-z0-9_.@:-]{4,32}$")]
    device_name: String,
}

/// A page of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageParams {
    /// The page, from 1 (default 1).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    current_page: Option<u32>,
    /// Items a page, 1 to 200 (default 50).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 200)]
    page_size: Option<u32>,
}

impl PageParams {
    /// The page's offset and size, and its number.
    fn window(&self) -> Reply<(u64, u32, u32)> {
        let page = self.current_page.unwrap_or(1);
        let size = self.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if page == 0 {
            return Err(invalid("currentPage: must be at least 1"));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(invalid("pageSize: must be 1 to 200"));
        }
        Ok((u64::from(page - 1) * u64::from(size), size, page))
    }
}

/// A page of products.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ProductPage<'a> {
    current_page: u32,
    page_size: u32,
    /// Products in all.
    total: u64,
    #[schema(value_type = Vec<ProductView>)]
    items: Vec<ProductView<'a>>,
}

/// A page of devices.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DevicePage {
    current_page: u32,
    page_size: u32,
    /// The product's devices in all.
    total: u64,
    items: Vec<DeviceView>,
}

/// BatchRegisterDevice's `deviceNames`: 1 to 10,000 distinct `DeviceName`s.
fn device_names_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(DEVICE_NAME_PATTERN)),
        )
        .min_items(Some(1))
        .max_items(Some(MAX_BATCH_DEVICES))
        .unique_items(true)
        .build()
}

/// [`DeviceName`]'s rule as a pattern (for the document).
const DEVICE_NAME_PATTERN: &str = "^[A-Za-z0-9_.@:-]{4,32}$";

/// An optional whole number that fits a `u32`, also when written with a zero fraction (`5.0`
/// is the JSON number 5, as JSON Schema's `integer` reads it).
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX))
            .map(|f| f as u64)
    });
    whole
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("not a whole number within 0 to 4294967295"))
}

/// CreateProduct's body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateProductRequest {
    /// `ProductName`: 1–64 characters without control characters.
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,64}$")]
    name: Option<String>,
    /// Dynamic registration on (default off).
    #[serde(default)]
    dynamic_registration: bool,
    /// Registration without pre-registration (regnwl) on (default off; in effect only while
    /// dynamic registration is on).
    #[serde(default)]
    pre_registration_free: bool,
    /// The most devices regnwl may create (default 10,000).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    device_quota: Option<u32>,
}

/// UpdateProduct's body: what is not given is kept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateProductRequest {
    /// Dynamic registration on or off. Off refuses new activations; activated devices are
    /// not affected.
    dynamic_registration: Option<bool>,
    /// Registration without pre-registration (regnwl) on or off.
    pre_registration_free: Option<bool>,
    /// The most devices regnwl may create.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    device_quota: Option<u32>,
    /// Registrations issued a second, 1 to 1,000,000.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 1000000)]
    rate: Option<u32>,
    /// Registrations issued at once, at least 1.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    burst: Option<u32>,
    /// Refusals within `refusalWindowSecs` that switch dynamic registration off (0: never),
    /// at most 100,000.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u64>, maximum = 100000)]
    refusal_threshold: Option<u32>,
    /// The window of `refusalThreshold`, in seconds, at least 1.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    refusal_window_secs: Option<u32>,
    /// Refuse a registration whose random was seen for the device.
    unique_random: Option<bool>,
}

/// RegisterDevice's body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RegisterDeviceRequest {
    /// `DeviceName`: 4–32 of `A-Za-z0-9_-.@:`.
    #[schema(pattern = "^[A-Za-z0-9_.@:-]{4,32}$")]
    device_name: String,
}

/// BatchRegisterDevice's body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BatchRegisterDeviceRequest {
    /// 1 to 10,000 `DeviceName`s, each once.
    #[schema(schema_with = device_names_schema)]
    device_names: Vec<String>,
}

/// This document.
#[utoipa::path(
    get,
    path = "/admin/openapi.json",
    operation_id = "GetOpenApiDocument",
    responses(
        (status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json"),
        (status = 401, description = "No valid admin token", body = ErrorBody),
    )
)]
async fn openapi_document() -> Response {
    Json(AdminApi::openapi()).into_response()
}

/// Lists products by key, a page at a time (QueryProductList). No secrets.
#[utoipa::path(
    get,
    path = "/admin/products",
    operation_id = "QueryProductList",
    params(PageParams),
    responses(
        (status = 200, body = ProductPage),
        (status = 400, description = "A paging parameter out of range", body = ErrorBody),
        Refusals,
    )
)]
async fn query_product_list(
    State(services): Shared,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Reply<Response> {
    let Query(params) = params?;
    let (offset, page_size, current_page) = params.window()?;
    let products = admin(&services).products().await?;
    Ok(Json(ProductPage {
        current_page,
        page_size,
        total: products.len() as u64,
        items: products
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(page_size as usize)
            .map(ProductView::of)
            .collect(),
    })
    .into_response())
}

/// Creates a product with a generated ProductKey and ProductSecret (CreateProduct). The
/// reply is the one that shows the ProductSecret.
#[utoipa::path(
    post,
    path = "/admin/products",
    operation_id = "CreateProduct",
    request_body = CreateProductRequest,
    responses(
        (status = 201, description = "Created; productSecret shown this once", body = ProductView),
        (status = 400, description = "A malformed body or name", body = ErrorBody),
        (status = 415, description = "The body is not application/json", body = ErrorBody),
        Refusals,
    )
)]
async fn create_product(
    State(services): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Reply<Response> {
    let request: CreateProductRequest = json_body(&headers, &body)?;
    let admin = admin(&services);
    let switch = if request.dynamic_registration {
        DynamicRegistration::On
    } else {
        DynamicRegistration::Off
    };
    let mut product = admin
        .create_product(request.name.as_deref(), switch)
        .await?;
    if request.pre_registration_free || request.device_quota.is_some() {
        let update = ProductUpdate {
            pre_registration_free: Some(request.pre_registration_free),
            device_quota: request.device_quota,
            ..ProductUpdate::default()
        };
        let updated = admin.update_product(&product.product_key, update).await?;
        product.pre_registration_free = updated.pre_registration_free;
    }
    tracing::info!(product_key = %product.product_key, "admin API: product created");
    Ok((
        StatusCode::CREATED,
        Json(ProductView::exposing_secret(&product)),
    )
        .into_response())
}

/// One product, without its secret (QueryProduct).
#[utoipa::path(
    get,
    path = "/admin/products/{product_key}",
    operation_id = "QueryProduct",
    params(ProductPath),
    responses(
        (status = 200, body = ProductView),
        ProductRefusals,
        Refusals,
    )
)]
async fn query_product(
    State(services): Shared,
    path: Result<Path<ProductPath>, PathRejection>,
) -> Reply<Response> {
    let product_key = product_key(&path?.0.product_key)?;
    let product = admin(&services).product(&product_key).await?;
    Ok(Json(ProductView::of(&product)).into_response())
}

/// Changes a product's switches and registration limits; what is not given is kept
/// (UpdateProduct).
#[utoipa::path(
    patch,
    path = "/admin/products/{product_key}",
    operation_id = "UpdateProduct",
    params(ProductPath),
    request_body = UpdateProductRequest,
    responses(
        (status = 200, description = "The product as it is now", body = ProductView),
        (status = 400, description = "A malformed body or a limit out of range", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 415, description = "The body is not application/json", body = ErrorBody),
        Refusals,
    )
)]
async fn update_product(
    State(services): Shared,
    path: Result<Path<ProductPath>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply<Response> {
    let product_key = product_key(&path?.0.product_key)?;
    let request: UpdateProductRequest = json_body(&headers, &body)?;
    let update = ProductUpdate {
        dynamic_registration: request.dynamic_registration.map(|on| {
            if on {
                DynamicRegistration::On
            } else {
                DynamicRegistration::Off
            }
        }),
        pre_registration_free: request.pre_registration_free,
        device_quota: request.device_quota,
        rate: request.rate,
        burst: request.burst,
        refusal_threshold: request.refusal_threshold,
        refusal_window_secs: request.refusal_window_secs,
        unique_random: request.unique_random,
    };
    let product = admin(&services)
        .update_product(&product_key, update)
        .await?;
    tracing::info!(%product_key, "admin API: product updated");
    Ok(Json(ProductView::of(&product)).into_response())
}

/// Brings in products issued by Alibaba Cloud, keys and secrets unchanged: the body is an
/// export, JSON lines or CSV with a header row (ProductKey, ProductSecret, ProductName,
/// DynamicRegistration), as `iotauth product import` reads it. A re-run changes nothing.
#[utoipa::path(
    post,
    path = "/admin/product-imports",
    operation_id = "ImportProducts",
    request_body(content(
        (String = "text/csv"),
        (String = "application/x-ndjson"),
    )),
    responses(
        (status = 200, description = "Imported", body = ImportSummary),
        (status = 400, description = "A line refused (named with its field)", body = ErrorBody),
        (status = 409, description = "A product exists with another secret", body = ErrorBody),
        (status = 413, description = "Over 256 MiB", body = ErrorBody),
        Refusals,
    )
)]
async fn import_products(State(services): Shared, body: axum::body::Bytes) -> Reply<Response> {
    let products = parse_product_import(&body)?;
    let summary = admin(&services).import_products(products).await?;
    tracing::info!(
        created = summary.created,
        unchanged = summary.unchanged,
        "admin API: products imported"
    );
    Ok(Json(summary).into_response())
}

/// A product's devices by name, a page at a time, without secrets (QueryDevice).
#[utoipa::path(
    get,
    path = "/admin/products/{product_key}/devices",
    operation_id = "QueryDevice",
    params(ProductPath, PageParams),
    responses(
        (status = 200, body = DevicePage),
        (status = 400, description = "A malformed ProductKey or paging parameter", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        Refusals,
    )
)]
async fn query_device(
    State(services): Shared,
    path: Result<Path<ProductPath>, PathRejection>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Reply<Response> {
    let product_key = product_key(&path?.0.product_key)?;
    let Query(params) = params?;
    let (offset, page_size, current_page) = params.window()?;
    let (total, devices) = admin(&services)
        .device_page(&product_key, offset, page_size)
        .await?;
    Ok(Json(DevicePage {
        current_page,
        page_size,
        total,
        items: devices.into_iter().map(DeviceView::of_summary).collect(),
    })
    .into_response())
}

/// Registers a device (Inactive) with a generated DeviceSecret (RegisterDevice). The reply is
/// the one that shows the DeviceSecret.
#[utoipa::path(
    post,
    path = "/admin/products/{product_key}/devices",
    operation_id = "RegisterDevice",
    params(ProductPath),
    request_body = RegisterDeviceRequest,
    responses(
        (status = 201, description = "Registered; deviceSecret shown this once", body = IssuedDeviceView),
        (status = 400, description = "A malformed ProductKey or DeviceName", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 415, description = "The body is not application/json", body = ErrorBody),
        Refusals,
    )
)]
async fn register_device(
    State(services): Shared,
    path: Result<Path<ProductPath>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply<Response> {
    let product_key = product_key(&path?.0.product_key)?;
    let request: RegisterDeviceRequest = json_body(&headers, &body)?;
    let device_name = device_name(&request.device_name)?;
    let device = admin(&services)
        .register_device(product_key, device_name)
        .await?;
    tracing::info!(%product_key, %device_name, "admin API: device registered");
    Ok((
        StatusCode::CREATED,
        Json(IssuedDeviceView::exposing_secret(&device)),
    )
        .into_response())
}

/// Registers up to 10,000 devices, each with a generated DeviceSecret, all or none
/// (BatchRegisterDevice). The reply is the one that shows their secrets.
#[utoipa::path(
    post,
    path = "/admin/products/{product_key}/device-batches",
    operation_id = "BatchRegisterDevice",
    params(ProductPath),
    request_body = BatchRegisterDeviceRequest,
    responses(
        (status = 201, description = "All registered; deviceSecrets shown this once", body = Vec<IssuedDeviceView>),
        (status = 400, description = "A malformed name, a name twice, none or over 10,000", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 409, description = "A name is taken: none was registered", body = ErrorBody),
        (status = 415, description = "The body is not application/json", body = ErrorBody),
        Refusals,
    )
)]
async fn batch_register_device(
    State(services): Shared,
    path: Result<Path<ProductPath>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply<Response> {
    let product_key = product_key(&path?.0.product_key)?;
    let request: BatchRegisterDeviceRequest = json_body(&headers, &body)?;
    let names = request
        .device_names
        .iter()
        .enumerate()
        .map(|(index, text)| {
            DeviceName::new(text)
                .map_err(|e| invalid(format!("deviceNames[{index}]: {}", ErrorChain(&e))))
        })
        .collect::<Reply<Vec<_>>>()?;
    let devices = admin(&services)
        .register_devices(product_key, &names)
        .await?;
    tracing::info!(%product_key, count = devices.len(), "admin API: devices registered");
    let views: Vec<_> = devices
        .iter()
        .map(IssuedDeviceView::exposing_secret)
        .collect();
    Ok((StatusCode::CREATED, Json(views)).into_response())
}

/// Brings in device certificates issued by Alibaba Cloud, secrets unchanged, all or none:
/// the body is an export, JSON lines or CSV with a header row (ProductKey, DeviceName,
/// DeviceSecret, Status: UNACTIVE, ONLINE, OFFLINE, DISABLE), as `iotauth device import`
/// reads it. A re-run changes nothing.
#[utoipa::path(
    post,
    path = "/admin/device-imports",
    operation_id = "ImportDevices",
    request_body(content(
        (String = "text/csv"),
        (String = "application/x-ndjson"),
    )),
    responses(
        (status = 200, description = "Imported", body = ImportSummary),
        (status = 400, description = "A line refused (named with its field)", body = ErrorBody),
        (status = 404, description = "A line names an unknown product", body = ErrorBody),
        (status = 409, description = "A device exists with another secret", body = ErrorBody),
        (status = 413, description = "Over 256 MiB", body = ErrorBody),
        Refusals,
    )
)]
async fn import_devices(State(services): Shared, body: axum::body::Bytes) -> Reply<Response> {
    let devices = parse_device_import(&body)?;
    let summary = admin(&services).import_devices(devices, |_| {}).await?;
    tracing::info!(
        created = summary.created,
        unchanged = summary.unchanged,
        "admin API: devices imported"
    );
    Ok(Json(summary).into_response())
}

/// The product key and device name of a device's path.
fn device_path(path: Result<Path<DevicePath>, PathRejection>) -> Reply<(ProductKey, DeviceName)> {
    let Path(path) = path?;
    Ok((
        product_key(&path.product_key)?,
        device_name(&path.device_name)?,
    ))
}

/// One device, without its secret (QueryDeviceDetail).
#[utoipa::path(
    get,
    path = "/admin/products/{product_key}/devices/{device_name}",
    operation_id = "QueryDeviceDetail",
    params(DevicePath),
    responses(
        (status = 200, body = DeviceView),
        DeviceRefusals,
        Refusals,
    )
)]
async fn query_device_detail(
    State(services): Shared,
    path: Result<Path<DevicePath>, PathRejection>,
) -> Reply<Response> {
    let (product_key, device_name) = device_path(path)?;
    let device = admin(&services).device(&product_key, &device_name).await?;
    Ok(Json(DeviceView::of(&device)).into_response())
}

/// Applies an operator's event through the services (which end the device's sessions when
/// it revokes), and replies with the device as it is then.
async fn operator_event(
    services: &Services,
    path: Result<Path<DevicePath>, PathRejection>,
    event: Event,
) -> Reply<Response> {
    let (product_key, device_name) = device_path(path)?;
    services
        .apply_operator_event(&product_key, &device_name, event)
        .await?;
    tracing::info!(%product_key, %device_name, event = event.name(), "admin API: device changed");
    if event == Event::Delete {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let device = admin(services).device(&product_key, &device_name).await?;
    Ok(match event {
        // The new secret must reach the device once: shown as registration shows it.
        Event::Reset => Json(IssuedDeviceView::exposing_secret(&device)).into_response(),
        _ => Json(DeviceView::of(&device)).into_response(),
    })
}

/// Deletes a device (DeleteDevice); its sessions end.
#[utoipa::path(
    delete,
    path = "/admin/products/{product_key}/devices/{device_name}",
    operation_id = "DeleteDevice",
    params(DevicePath),
    responses(
        (status = 204, description = "Deleted"),
        DeviceRefusals,
        Refusals,
    )
)]
async fn delete_device(
    State(services): Shared,
    path: Result<Path<DevicePath>, PathRejection>,
) -> Reply<Response> {
    operator_event(&services, path, Event::Delete).await
}

/// Disables a device (DisableThing): it can neither log in nor register, and its sessions
/// end.
#[utoipa::path(
    post,
    path = "/admin/products/{product_key}/devices/{device_name}/disable",
    operation_id = "DisableThing",
    params(DevicePath),
    responses(
        (status = 200, description = "The device as it is now", body = DeviceView),
        DeviceRefusals,
        Refusals,
    )
)]
async fn disable_thing(
    State(services): Shared,
    path: Result<Path<DevicePath>, PathRejection>,
) -> Reply<Response> {
    operator_event(&services, path, Event::Disable).await
}

/// Enables a device again (EnableThing).
#[utoipa::path(
    post,
    path = "/admin/products/{product_key}/devices/{device_name}/enable",
    operation_id = "EnableThing",
    params(DevicePath),
    responses(
        (status = 200, description = "The device as it is now", body = DeviceView),
        DeviceRefusals,
        Refusals,
    )
)]
async fn enable_thing(
    State(services): Shared,
    path: Result<Path<DevicePath>, PathRejection>,
) -> Reply<Response> {
    operator_event(&services, path, Event::Enable).await
}

/// Resets a device (ResetThing): back to Inactive with a new DeviceSecret, shown in this
/// reply; its sessions end.
#[utoipa::path(
    post,
    path = "/admin/products/{product_key}/devices/{device_name}/reset",
    operation_id = "ResetThing",
    params(DevicePath),
    responses(
        (status = 200, description = "Reset; the new deviceSecret shown this once", body = IssuedDeviceView),
        DeviceRefusals,
        Refusals,
    )
)]
async fn reset_thing(
    State(services): Shared,
    path: Result<Path<DevicePath>, PathRejection>,
) -> Reply<Response> {
    operator_event(&services, path, Event::Reset).await
}

/// The refusals every operation may answer, as the OpenAPI document lists them (these types
/// exist for utoipa's derive: a reply is built by [`Failure`], never from them).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Refusals {
    #[response(status = 401, description = "No valid admin token")]
    Unauthorized(ErrorBody),
    #[response(status = 503, description = "The store failed")]
    Unavailable(ErrorBody),
}

/// A device operation's refusals besides [`Refusals`]: a malformed path, no such device.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum DeviceRefusals {
    #[response(status = 400, description = "A malformed ProductKey or DeviceName")]
    Malformed(ErrorBody),
    #[response(status = 404, description = "No such device")]
    NotFound(ErrorBody),
}

/// A product operation's refusals besides [`Refusals`]: a malformed path, no such product.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum ProductRefusals {
    #[response(status = 400, description = "A malformed ProductKey")]
    Malformed(ErrorBody),
    #[response(status = 404, description = "No such product")]
    NotFound(ErrorBody),
}

/// `Cache-Control: no-store` on every reply: some carry secrets, none may be kept by a proxy
/// or a client's cache.
async fn no_store(mut reply: Response) -> Response {
    reply.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    reply
}

async fn method_not_allowed() -> Response {
    refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this route does not take this method".into(),
    )
}

async fn not_found() -> Response {
    refusal(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such route".into(),
    )
}

/// Answers a request whose body was not read ([`UnreadBody`]) with its status, as JSON.
async fn refuse_unread_body(request: Request, next: Next) -> Response {
    match request.extensions().get::<UnreadBody>() {
        Some(unread) => refusal(
            unread.status,
            ErrorCode::InvalidParameter,
            unread.reason.into(),
        ),
        None => next.run(request).await,
    }
}

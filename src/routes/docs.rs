//! Where people land: `/` and `/swagger-ui` (without the slash Swagger UI needs) redirect to
//! Swagger UI, which serves the OpenAPI document at [`OPENAPI_JSON`].

use actix_web::{http::header::LOCATION, HttpResponse};

/// Swagger UI's address.
pub const SWAGGER_UI: &str = "/swagger-ui/";
/// The generated OpenAPI document's address.
pub const OPENAPI_JSON: &str = "/api-docs/openapi.json";

/// `GET /`: 307 to Swagger UI (temporary: `/` may serve something else one day).
pub async fn home() -> HttpResponse {
    HttpResponse::TemporaryRedirect()
        .insert_header((LOCATION, SWAGGER_UI))
        .finish()
}

/// `GET /swagger-ui`: 308 to `/swagger-ui/`, where Swagger UI's relative links work.
pub async fn swagger_ui_without_slash() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((LOCATION, SWAGGER_UI))
        .finish()
}

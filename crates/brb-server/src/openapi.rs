//! The OpenAPI document, derived from the handlers' `#[utoipa::path]` attributes and the API
//! types' `ToSchema` derives: it cannot drift from the code because it is the code.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Big Red Button control plane",
        description = "Pause every background worker with one press. All /api/v1 endpoints \
            except openapi.json take `Authorization: Bearer <token>`.",
    ),
    paths(
        routes::healthz,
        routes::readyz,
        routes::metrics,
        routes::openapi,
        routes::info,
        routes::list_switches,
        routes::create_switch,
        routes::get_switch,
        routes::update_switch,
        routes::delete_switch,
        routes::set_state,
        routes::switch_events,
        routes::all_events,
        routes::audit,
        routes::create_token,
        routes::list_tokens,
        routes::revoke_token,
        routes::rotate_token,
        routes::worker_report,
        routes::switch_workers,
        routes::post_samples,
        routes::get_series,
        routes::notifications,
        crate::slack::command,
    ),
    components(schemas(brb_api::DeletedSwitch, brb_api::SampleTick)),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON, rendered once.
pub fn document_json() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"openapi rendering failed: {e}\"}}"))
    })
    .clone()
}

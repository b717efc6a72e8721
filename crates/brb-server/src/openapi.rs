//! The OpenAPI document, derived from the handlers' `#[utoipa::path]` attributes and the API
//! types' `ToSchema` derives: it cannot drift from the code because it is the code.

use std::sync::OnceLock;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Big Red Button control plane",
        description = "Pause every background worker with one press. All /api/v1 endpoints \
            except openapi.json take `Authorization: Bearer <token>`. The OpenFeature Remote \
            Evaluation Protocol (OFREP) endpoints under /ofrep/v1 serve each switch as a boolean \
            flag (true while work is allowed) and take the same token as a bearer token or in \
            `X-API-Key`; their errors have OFREP's shape `{key, errorCode, errorDetails}`.",
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
        routes::ramp_control,
        crate::approval::request_resume,
        crate::approval::approve,
        crate::approval::reject,
        crate::approval::break_glass,
        crate::approval::list_requests,
        crate::drill::start,
        crate::drill::report,
        routes::switch_events,
        routes::all_events,
        routes::audit,
        routes::create_token,
        routes::list_tokens,
        routes::revoke_token,
        routes::rotate_token,
        routes::worker_report,
        routes::adapter_action,
        routes::switch_workers,
        routes::switch_guard,
        routes::post_samples,
        routes::get_series,
        routes::notifications,
        crate::slack::command,
        crate::slack::interaction,
        crate::ofrep::evaluate_flag,
        crate::ofrep::evaluate_flags,
        crate::ofrep::events,
    ),
    components(schemas(
        brb_api::DeletedSwitch,
        brb_api::SampleTick,
        brb_api::GuardStatus,
        brb_api::ofrep::OfrepStreamEvent
    )),
    modifiers(&Bearer, &AuthRateLimit, &OptionalBodies),
)]
pub struct ApiDoc;

/// Bodies a handler reads as `{}` when the request has none (`rotate_token`). utoipa makes a
/// body optional only by making it nullable too, and `null` is not accepted: so the flag is set
/// here instead.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let rotate = openapi
            .paths
            .paths
            .get_mut("/api/v1/tokens/{id}/rotate")
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut());
        if let Some(body) = rotate {
            body.required = Some(utoipa::openapi::Required::False);
            body.description = Some("Optional: no body means the default grace period".into());
        }
    }
}

/// Every request with a token can get 429: an address that keeps failing authentication is
/// slowed down on every endpoint (`limits.rs`). Operations that document a 429 of their own
/// (state changes, streams) keep theirs.
struct AuthRateLimit;

impl Modify for AuthRateLimit {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let response = ResponseBuilder::new()
            .description(
                "`rate_limited`: too many failed authentications from this address (with \
                 `Retry-After`)",
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiErrorBody")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ];
            for op in ops.into_iter().flatten() {
                if op.security.is_some() {
                    op.responses
                        .responses
                        .entry("429".to_string())
                        .or_insert_with(|| response.clone().into());
                }
            }
        }
    }
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // OFREP's `ApiKeyAuth`: the same token, for providers configured with that header.
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// The schema's limits are literals in `#[schema(...)]` attributes; the code's are
    /// constants. They must agree, or generated clients and schemathesis test the wrong rule.
    #[test]
    fn schema_limits_match_the_codes_constants() {
        let doc: Value = serde_json::from_str(&super::document_json()).unwrap();
        let s = &doc["components"]["schemas"];
        let prop = |schema: &str, p: &str| s[schema]["properties"][p].clone();
        let num = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("{v}")) as usize;
        assert_eq!(
            num(&prop("RotateTokenRequest", "grace_secs")["maximum"]),
            brb_api::MAX_GRACE_SECS as usize
        );
        assert_eq!(
            num(&prop("SetStateRequest", "reason")["maxLength"]),
            brb_api::MAX_REASON_CHARS
        );
        for schema in ["CreateSwitchRequest", "UpdateSwitchRequest"] {
            assert_eq!(
                num(&prop(schema, "description")["maxLength"]),
                brb_api::MAX_DESCRIPTION_CHARS
            );
        }
        assert_eq!(
            num(&prop("WorkerReport", "worker_id")["maxLength"]),
            brb_api::MAX_WORKER_ID
        );
        assert_eq!(
            num(&prop("Sample", "name")["maxLength"]),
            brb_api::MAX_SERIES_NAME
        );
        assert_eq!(
            num(&prop("SampleBatch", "samples")["maxItems"]),
            brb_api::MAX_SAMPLES_PER_POST
        );
        let ramp = &s["RampSpec"]["allOf"][1]["properties"]["duration_secs"];
        assert_eq!(num(&ramp["maximum"]), brb_api::MAX_RAMP_SECS as usize);
        let steps = s["RampShape"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|v| v["properties"].get("fractions").cloned())
            .unwrap();
        assert_eq!(num(&steps["maxItems"]), brb_api::MAX_RAMP_STEPS);
        // The switch name rule, as the schema states it, against the code's.
        let pattern = prop("CreateSwitchRequest", "name")["pattern"].clone();
        assert_eq!(pattern, "^[a-z0-9][a-z0-9_-]*$");
        assert_eq!(num(&prop("CreateSwitchRequest", "name")["maxLength"]), 63);
        assert!(brb_api::validate_switch_name(&"a".repeat(63)).is_ok());
        assert!(brb_api::validate_switch_name(&"a".repeat(64)).is_err());
    }

    /// Every operation that takes a token documents 429.
    #[test]
    fn authenticated_operations_document_429() {
        let doc: Value = serde_json::from_str(&super::document_json()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if op.get("security").is_some() {
                    assert!(
                        op["responses"].get("429").is_some(),
                        "{method} {path} lacks 429"
                    );
                }
            }
        }
    }
}

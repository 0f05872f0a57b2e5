//! `GET /openapi.json`: the OpenAPI 3.1 document, built from the same route table the router is
//! built from (`super::ROUTES`), so a route cannot be served without being documented or the
//! other way round. The schemas are derived from the body types the table names (`super::model`),
//! the types the handlers build their answers from.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};

use super::model::{App, Problem};
use super::{Access, Body, ROUTES, Route};

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        entry[route.method] = operation(route);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "scim-bridge",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Turns privileged-access activations (signed PIM webhooks) into SCIM 2.0 group membership in target applications.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "webhook", "description": "Signed PIM events"},
            {"name": "apps", "description": "Target applications, their groups, cycles and quarantine"},
            {"name": "directory", "description": "Standing (non-activation) memberships"},
            {"name": "sources", "description": "Where events come from: the webhook and the Graph pollers"},
            {"name": "logs", "description": "Provisioning logs, activations and the audit trail"},
            {"name": "access ends", "description": "How long access outlived each end of an entitlement, per app (SPEC §8)"},
            {"name": "tokens", "description": "API tokens"},
            {"name": "service", "description": "Health, metrics, this document and the operator page"},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API token (`POST /v1/tokens`)."},
                "signature": {
                    "type": "apiKey", "in": "header", "name": "X-Bridge-Signature",
                    "description": "`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<raw body>\")>`; several `v1=` may be given.",
                },
            },
            "schemas": schemas(),
        },
    })
}

fn operation(route: &Route) -> Value {
    let mut params: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let query = route.query.parameters();
    params.extend(
        query
            .iter()
            .map(|p| serde_json::to_value(p).expect("parameters serialize")),
    );

    if route.path == "/v1/config" && route.method == "put" {
        params.push(json!({"name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"},
            "description": "The `ETag` of a dry run (or of `GET /v1/config`): applies only if the apps did not change since (else 412)"}));
    }
    let mut responses = Map::new();
    let mut ok = match &route.body {
        Body::Empty => json!({"description": route.ok_description()}),
        Body::Json(schema) => json!({
            "description": route.ok_description(),
            "content": {"application/json": {"schema": schema_ref(&schema.name())}},
        }),
        Body::Media(types) => {
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": {"type": "string"}})))
                .collect();
            json!({"description": route.ok_description(), "content": content})
        }
    };
    if route.path == "/v1/config" {
        // The state the document was read from (GET) or the plan was made on (PUT): what
        // `If-Match` takes.
        ok["headers"] = json!({"ETag": {
            "description": "The state of the apps this answer was made from; `If-Match` of `PUT /v1/config` takes it",
            "required": true,
            "schema": {"type": "string"},
        }});
    }
    responses.insert(route.ok.to_string(), ok);
    if query.iter().any(|p| p.name == "deprovision") {
        responses.insert(
            "202".into(),
            json!({"description": "With `deprovision=true`: the app is `deleting` until every member the bridge provisioned is removed",
                   "content": {"application/json": {"schema": schema_ref(&App::name())}}}),
        );
    }
    let problem = |why: &str| json!({"description": why, "content": {"application/problem+json": {"schema": schema_ref(&Problem::name())}}});
    if route.request.is_some() || !query.is_empty() || route.path.contains('{') {
        responses.insert("400".into(), problem("Malformed body or parameter; `field` names it"));
    }
    if route.request.is_some() {
        responses.insert(
            "408".into(),
            problem("The body did not arrive within 30 s; the connection is closed"),
        );
    }
    if route.path == "/v1/tokens" && route.method == "post" {
        responses.insert(
            "409".into(),
            problem("The name is taken by a live token, or is `admin` (the bootstrap token's)"),
        );
    }
    if (route.path == "/v1/apps" && route.method == "post")
        || (route.path == "/v1/apps/{appId}" && route.method == "patch")
    {
        responses.insert(
            "409".into(),
            problem("The name is another app's (names are unique), or the change conflicts with the app's state"),
        );
    }
    if route.path == "/v1/config" && route.method == "put" {
        responses.insert(
            "409".into(),
            problem("The apps changed while the document was planned: send it again"),
        );
        responses.insert(
            "412".into(),
            problem("`If-Match` names a state of the apps that changed since"),
        );
    }
    match route.access {
        Access::Public => {}
        Access::Signed => {
            responses.insert("401".into(), problem("Missing, wrong or stale signature"));
            responses.insert(
                "409".into(),
                problem("Same id and status already received with other content"),
            );
            responses.insert("413".into(), problem("Body over 1 MiB"));
            responses.insert("415".into(), problem("Body is not JSON"));
            responses.insert("422".into(), problem("A rule (R5, R6) refuses the event"));
            responses.insert(
                "503".into(),
                problem("The database cannot commit; retry after `Retry-After`"),
            );
        }
        Access::Roles(_) => {
            responses.insert("401".into(), problem("Missing or unknown token"));
            responses.insert("403".into(), problem("The token's role may not do this"));
            responses.insert("404".into(), problem("No such resource, or not visible to this token"));
        }
    }
    if route.method != "get" && route.method != "delete" && matches!(route.access, Access::Roles(_)) {
        responses.insert(
            "422".into(),
            problem("The request is well formed but cannot be carried out"),
        );
    }

    let mut op = json!({
        "operationId": route.operation_id(),
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": params,
        "responses": responses,
    });
    match route.access {
        Access::Public => op["security"] = json!([]),
        Access::Signed => op["security"] = json!([{"signature": []}]),
        Access::Roles(roles) => {
            op["security"] = json!([{"bearer": []}]);
            op["description"] = json!(format!("Who: {roles}."));
        }
    }
    if let Some(schema) = route.request {
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema_ref(&schema.name())}},
        });
    }
    op
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A route's query parameters, derived from the type its handler reads them into (`IntoParams`),
/// less those the route does not read.
#[derive(Clone, Copy)]
pub struct ParamsOf {
    params: fn() -> Vec<Parameter>,
    except: &'static [&'static str],
}

impl ParamsOf {
    pub const NONE: Self = Self {
        params: Vec::new,
        except: &[],
    };

    pub const fn of<T: IntoParams>() -> Self {
        Self {
            params: query_parameters::<T>,
            except: &[],
        }
    }

    /// The same, without the named parameters (which the type has but this route ignores).
    pub const fn except(self, names: &'static [&'static str]) -> Self {
        Self { except: names, ..self }
    }

    pub fn parameters(&self) -> Vec<Parameter> {
        (self.params)()
            .into_iter()
            .filter(|p| !self.except.contains(&p.name.as_str()))
            .collect()
    }
}

fn query_parameters<T: IntoParams>() -> Vec<Parameter> {
    T::into_params(|| Some(ParameterIn::Query))
}

/// A body's type as the route table names it: its name, its schema and the schemas it refers to,
/// all derived from the type (`ToSchema`).
#[derive(Clone, Copy)]
pub struct SchemaOf {
    name: fn() -> Cow<'static, str>,
    schema: fn() -> RefOr<Schema>,
    refs: fn(&mut Vec<(String, RefOr<Schema>)>),
    /// The handler refuses fields the type does not name.
    closed: bool,
}

impl SchemaOf {
    pub const fn of<T: ToSchema>() -> Self {
        Self {
            name: T::name,
            schema: T::schema,
            refs: T::schemas,
            closed: false,
        }
    }

    /// A request body whose handler answers 400 for any field the type does not name. The
    /// schema says so with `unevaluatedProperties: false`, which also holds across `allOf`.
    pub const fn closed<T: ToSchema>() -> Self {
        Self {
            closed: true,
            ..Self::of::<T>()
        }
    }

    pub fn name(&self) -> Cow<'static, str> {
        (self.name)()
    }
}

impl std::fmt::Debug for SchemaOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The component schemas: those of every body in the route table, of what they refer to, and
/// of the problem answer every error carries.
fn schemas() -> Value {
    let mut all: Vec<(String, RefOr<Schema>)> = Vec::new();
    let bodies: Vec<SchemaOf> = ROUTES
        .iter()
        .flat_map(|r| {
            let answer = match r.body {
                Body::Json(schema) => Some(schema),
                _ => None,
            };
            r.request.into_iter().chain(answer)
        })
        .chain([SchemaOf::of::<Problem>()])
        .collect();
    for schema in &bodies {
        all.push((schema.name().into_owned(), (schema.schema)()));
        (schema.refs)(&mut all);
    }
    let map: BTreeMap<String, RefOr<Schema>> = all.into_iter().collect();
    let mut schemas = serde_json::to_value(map).expect("schemas serialize");
    for closed in bodies.iter().filter(|s| s.closed) {
        schemas[closed.name().as_ref()]["unevaluatedProperties"] = Value::Bool(false);
    }
    schemas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_leaves_out_only_parameters_its_query_type_has() {
        for route in ROUTES {
            let names: Vec<String> = (route.query.params)().into_iter().map(|p| p.name).collect();
            for left_out in route.query.except {
                assert!(
                    names.iter().any(|n| n == left_out),
                    "{} {} leaves out `{left_out}`, which its query type does not have",
                    route.method,
                    route.path
                );
            }
        }
    }
}

//! `GET /openapi.json`: the OpenAPI 3.1 document, built from the same route table the router is
//! built from (`super::ROUTES`), so a route cannot be served without being documented or the
//! other way round. The schemas describe the bodies the handlers build.

use serde_json::{Map, Value, json};

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
            {"name": "logs", "description": "Provisioning logs, activations and the audit trail"},
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
    params.extend(route.query.iter().map(|name| query_parameter(name)));

    let mut responses = Map::new();
    let ok = match &route.body {
        Body::Empty => json!({"description": route.ok_description()}),
        Body::Json(schema) => json!({
            "description": route.ok_description(),
            "content": {"application/json": {"schema": schema_ref(schema)}},
        }),
        Body::Media(types) => {
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": {"type": "string"}})))
                .collect();
            json!({"description": route.ok_description(), "content": content})
        }
    };
    responses.insert(route.ok.to_string(), ok);
    if route.query.contains(&"deprovision") {
        responses.insert(
            "202".into(),
            json!({"description": "With `deprovision=true`: the app is `deleting` until every member the bridge provisioned is removed",
                   "content": {"application/json": {"schema": schema_ref("App")}}}),
        );
    }
    let problem = |why: &str| json!({"description": why, "content": {"application/problem+json": {"schema": schema_ref("Problem")}}});
    if route.request.is_some() || !route.query.is_empty() || route.path.contains('{') {
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
            "content": {"application/json": {"schema": schema_ref(schema)}},
        });
    }
    op
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn query_parameter(name: &str) -> Value {
    let (schema, description) = match name {
        "appId" | "principalId" | "groupId" | "eventId" => (json!({"type": "string"}), "Only entries with this value"),
        "status" => (
            json!({"type": "string", "enum": ["success", "failure", "skipped", "deferred"]}),
            "Only entries with this outcome",
        ),
        "action" => (
            json!({"type": "string", "examples": ["add_member", "remove_member", "create_user", "update_user", "disable_user"]}),
            "Only entries of this action",
        ),
        "trigger" => (
            json!({"type": "string", "enum": ["activation", "deactivation", "expiry", "sync", "on_demand", "directory", "deprovision"]}),
            "Only entries with this trigger",
        ),
        "since" => (
            json!({"type": "string", "format": "date-time"}),
            "Entries at or after this time",
        ),
        "until" => (
            json!({"type": "string", "format": "date-time"}),
            "Entries before this time",
        ),
        "limit" => (
            json!({"type": "integer", "minimum": 1, "maximum": 500, "default": 100}),
            "Page size",
        ),
        "cursor" => (
            json!({"type": "string", "minLength": 1}),
            "`nextCursor` of the previous page; pages never skip or repeat entries while new ones arrive",
        ),
        "format" => (
            json!({"type": "string", "enum": ["csv", "jsonl"], "default": "jsonl"}),
            "Export format",
        ),
        "dryRun" => (
            json!({"type": "boolean", "default": false}),
            "Report what the cycle would do without writing to the target",
        ),
        "deprovision" => (
            json!({"type": "boolean", "default": false}),
            "First remove what the bridge provisioned",
        ),
        _ => (json!({"type": "string"}), ""),
    };
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

fn items_of(name: &str) -> Value {
    json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": schema_ref(name)}}})
}

fn schemas() -> Value {
    let time = json!({"type": "string", "format": "date-time"});
    let time_or_null = json!({"type": ["string", "null"], "format": "date-time"});
    let mut schemas = Map::new();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "field": {"type": "string", "description": "The field the problem is about"},
            },
        }),
    );
    schemas.insert(
        "Principal".into(),
        json!({
            "type": "object",
            "required": ["userPrincipalName"],
            "properties": {
                "userPrincipalName": {"type": "string", "pattern": "\\S"}, "displayName": nullable("string"),
                "givenName": nullable("string"), "surname": nullable("string"), "mail": nullable("string"),
            },
        }),
    );
    schemas.insert(
        "PimEvent".into(),
        json!({
            "type": "object",
            "description": "Mirrors Microsoft Graph's privilegedAccessGroupAssignmentScheduleRequest. (`id`, `status`) is the idempotency key.",
            "required": ["id", "action", "accessId", "principalId", "groupId", "status", "createdDateTime", "scheduleInfo"],
            "properties": {
                "id": {"type": "string"},
                "action": {"type": "string", "enum": ["selfActivate", "selfDeactivate", "selfExtend", "selfRenew", "adminAssign", "adminRemove", "adminUpdate", "adminExtend", "adminRenew"]},
                "accessId": {"type": "string", "enum": ["member", "owner"]},
                "principalId": {"type": "string"}, "groupId": {"type": "string"},
                "status": {"type": "string", "examples": ["Provisioned", "Revoked", "PendingApproval", "Granted", "Denied", "Canceled", "Failed"]},
                "createdDateTime": time, "justification": {"type": "string"},
                "scheduleInfo": {
                    "type": "object",
                    "properties": {
                        "startDateTime": time,
                        "expiration": {
                            "type": "object",
                            "properties": {
                                "type": {"type": "string", "enum": ["afterDuration", "afterDateTime", "noExpiration"]},
                                "duration": {"type": "string", "description": "ISO 8601 duration, e.g. PT2H"},
                                "endDateTime": time,
                            },
                        },
                    },
                },
                "principal": schema_ref("Principal"),
                "group": {
                    "type": "object",
                    "properties": {
                        "displayName": {"type": "string"}, "membershipRule": nullable("string"),
                        "onPremisesSyncEnabled": nullable("boolean"),
                    },
                },
            },
        }),
    );
    schemas.insert(
        "WebhookBody".into(),
        json!({
            "description": "One event, or a batch of 1 to 100.",
            "oneOf": [
                schema_ref("PimEvent"),
                {"type": "object", "required": ["value"], "properties": {"value": {"type": "array", "minItems": 1, "maxItems": 100, "items": schema_ref("PimEvent")}}},
            ],
        }),
    );
    schemas.insert(
        "WebhookAnswer".into(),
        json!({
            "type": "object",
            "description": "202 means committed. Each event of a batch is judged alone.",
            "required": ["events"],
            "properties": {"events": {"type": "array", "items": {
                "type": "object",
                "required": ["id", "status", "jobs"],
                "properties": {
                    "id": nullable("string"),
                    "status": {"type": "string", "enum": ["accepted", "duplicate", "conflict", "rejected"]},
                    "jobs": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "appId": {"type": "string"}}}},
                    "problem": schema_ref("Problem"),
                },
            }}},
        }),
    );
    schemas.insert(
        "Auth".into(),
        json!({
            "description": "Credentials for the target. Never returned.",
            "oneOf": [
                {"type": "object", "required": ["type", "token"], "properties": {"type": {"const": "bearer"}, "token": {"type": "string", "writeOnly": true}}},
                {"type": "object", "required": ["type", "tokenUrl", "clientId", "clientSecret"], "properties": {
                    "type": {"const": "oauth2ClientCredentials"}, "tokenUrl": {"type": "string", "format": "uri"},
                    "clientId": {"type": "string"}, "clientSecret": {"type": "string", "writeOnly": true}, "scope": {"type": "string"},
                }},
            ],
        }),
    );
    schemas.insert(
        "AppSettings".into(),
        json!({
            "type": "object",
            "properties": {
                "syncIntervalSeconds": {"type": "integer", "minimum": 1, "default": 2400},
                "rateLimit": {"type": "object", "properties": {"requests": {"type": "integer", "minimum": 1, "default": 5}, "windowSeconds": {"type": "integer", "minimum": 1, "default": 10}}},
                "pacing": {"type": "object", "properties": {"requestsPerSecond": {"type": "integer", "minimum": 1, "default": 25}}},
                "overflow": {"type": "string", "enum": ["nextCycle", "drain"], "default": "nextCycle"},
                "patchStyle": {"type": "string", "enum": ["auto", "rfc7644", "legacy"], "default": "auto"},
                "driftRepair": {"type": "string", "enum": ["report", "repair", "off"], "default": "report"},
                "outOfScope": {"type": "string", "enum": ["keep", "disable"], "default": "keep"},
                "membersPerPatch": {"type": "integer", "minimum": 1, "default": 100},
                "attributeMapping": {
                    "type": "array", "items": schema_ref("MappingEntry"),
                    "description": "What a target receives as a User: replaced whole, must map `userName`. Default: userName <- [userPrincipalName], externalId <- [objectId], displayName and name.formatted <- [displayName], name.givenName <- [givenName], name.familyName <- [surname], emails[type eq \"work\"].value <- [mail].",
                    "example": [
                        {"target": "userName", "source": "ToLower(NormalizeDiacritics([mail]))"},
                        {"target": "externalId", "source": "[objectId]"},
                        {"target": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "source": "[employeeId]", "apply": "onCreate"},
                    ],
                },
                "matching": {
                    "type": "array", "items": {"type": "string"}, "default": ["externalId", "userName"],
                    "description": "The mapped targets whose values find an existing user at the target, in order.",
                },
            },
        }),
    );
    schemas.insert(
        "MappingEntry".into(),
        json!({
            "type": "object", "required": ["target", "source"],
            "properties": {
                "target": {"type": "string", "description": "A SCIM User attribute path (`userName`, `name.givenName`, `emails[type eq \"work\"].value`, or `<extension URN>:<attribute>`)", "example": "userName"},
                "source": {"type": "string", "description": "An expression in the syntax of Microsoft Entra ID's attribute-mapping expressions", "example": "Join(\".\", ToLower([givenName]), ToLower([surname]))"},
                "apply": {"type": "string", "enum": ["always", "onCreate"], "default": "always"},
            },
        }),
    );
    schemas.insert(
        "MappingPreviewRequest".into(),
        json!({
            "type": "object", "required": ["principal"],
            "properties": {
                "principal": {"type": "object", "description": "The principal's attributes, as an event's `principal` object carries them", "example": {"userPrincipalName": "ada@contoso.com", "givenName": "Ada", "surname": "Lovelace", "mail": "ada@contoso.com", "employeeId": "4711"}},
                "principalId": {"type": "string", "description": "The principal's id (`[objectId]`)"},
            },
        }),
    );
    schemas.insert(
        "MappingPreview".into(),
        json!({
            "type": "object", "required": ["user", "matching"],
            "properties": {
                "user": {"type": "object", "description": "The SCIM User the bridge would create"},
                "matching": {"type": "array", "items": {"type": "string"}, "description": "The filters that would find an existing user, in order"},
            },
        }),
    );
    schemas.insert(
        "AppRegistration".into(),
        json!({
            "allOf": [schema_ref("AppSettings"), {
                "type": "object",
                "required": ["name", "scimBaseUrl", "auth"],
                "properties": {
                    "name": {"type": "string", "pattern": "\\S"}, "scimBaseUrl": {"type": "string", "format": "uri"},
                    "auth": schema_ref("Auth"), "owners": {"type": "array", "items": {"type": "string"}},
                },
            }],
        }),
    );
    schemas.insert(
        "AppUpdate".into(),
        json!({
            "type": "object",
            "description": "Only the fields given change. `status` pauses (`paused`) or resumes (`active`; a quarantined app returns to `quarantined`); admins change `owners`. A changed `scimBaseUrl` needs the complete `auth` for it in the same body (else 422 naming `auth`).",
            "allOf": [schema_ref("AppSettings"), {"type": "object", "properties": {
                "name": {"type": "string", "pattern": "\\S"}, "scimBaseUrl": {"type": "string", "format": "uri"},
                "auth": schema_ref("Auth"), "owners": {"type": "array", "items": {"type": "string"}},
                "status": {"type": "string", "enum": ["active", "paused"]},
            }}],
        }),
    );
    schemas.insert(
        "App".into(),
        json!({
            "allOf": [schema_ref("AppSettings"), {
                "type": "object",
                "required": ["id", "name", "scimBaseUrl", "auth", "owners", "status", "nextSyncAt"],
                "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "scimBaseUrl": {"type": "string"},
                    "auth": {"type": "object", "properties": {"type": {"type": "string", "enum": ["bearer", "oauth2ClientCredentials"]}}},
                    "owners": {"type": "array", "items": {"type": "string"}},
                    "status": {"type": "string", "enum": ["active", "paused", "quarantined", "deleting"], "description": "`deleting` while `DELETE ...?deprovision=true` removes what the bridge provisioned"},
                    "statusReason": nullable("string"),
                    "membersLeftToRemove": {"type": "integer", "description": "While `deleting` with deprovision: members the bridge provisioned that are still to be removed"},
                    "quarantined": {"type": "boolean", "description": "Quarantined by the bridge (also while paused); only `POST .../quarantine/clear` lifts it."},
                    "nextSyncAt": time,
                    "lastCycle": {"oneOf": [schema_ref("Cycle"), {"type": "null"}]},
                    "createdAt": time,
                },
            }],
        }),
    );
    schemas.insert("AppList".into(), json!(items_of("App")));
    schemas.insert(
        "AssignmentRequest".into(),
        json!({
            "type": "object", "required": ["targetDisplayName"],
            "properties": {"targetDisplayName": {"type": "string", "description": "The target group's displayName"}},
        }),
    );
    schemas.insert(
        "Assignment".into(),
        json!({
            "type": "object",
            "properties": {"appId": {"type": "string"}, "groupId": {"type": "string"}, "targetDisplayName": {"type": "string"}, "assignedAt": time},
        }),
    );
    schemas.insert("AssignmentList".into(), json!(items_of("Assignment")));
    schemas.insert(
        "ConnectionTest".into(),
        json!({
            "type": "object", "required": ["ok", "steps"],
            "properties": {"ok": {"type": "boolean"}, "error": nullable("string"), "steps": {"type": "array", "items": schema_ref("Step")}},
        }),
    );
    schemas.insert(
        "CycleStarted".into(),
        json!({"type": "object", "required": ["cycleId"], "properties": {"cycleId": {"type": "string"}}}),
    );
    schemas.insert(
        "CycleCounts".into(),
        json!({
            "type": "object",
            "properties": {
                "added": {"type": "integer"}, "removed": {"type": "integer"}, "usersCreated": {"type": "integer"},
                "usersUpdated": {"type": "integer"}, "usersDisabled": {"type": "integer"}, "failed": {"type": "integer"},
                "skipped": {"type": "integer"}, "driftFound": {"type": "integer"}, "deferredTaken": {"type": "integer"},
            },
        }),
    );
    schemas.insert(
        "Cycle".into(),
        json!({
            "type": "object",
            "required": ["id", "appId", "trigger", "startedAt", "status", "counts"],
            "properties": {
                "id": {"type": "string"}, "appId": {"type": "string"},
                "trigger": {"type": "string", "enum": ["schedule", "manual"]}, "dryRun": {"type": "boolean"},
                "startedAt": time, "endedAt": time_or_null,
                "status": {"type": "string", "enum": ["running", "success", "failed", "quarantined"]},
                "counts": schema_ref("CycleCounts"),
                "progress": {"type": ["string", "null"], "description": "What a running cycle is doing"},
                "report": {"type": ["object", "null"], "description": "Changes made (or, dry run, that would be) and drift found"},
            },
        }),
    );
    schemas.insert("CycleList".into(), json!(items_of("Cycle")));
    schemas.insert(
        "OnDemandRequest".into(),
        json!({
            "type": "object", "required": ["principalId", "groupId"],
            "properties": {"principalId": {"type": "string"}, "groupId": {"type": "string"}},
        }),
    );
    schemas.insert(
        "DirectoryMemberRequest".into(),
        json!({
            "type": "object",
            "properties": {"principal": schema_ref("Principal")},
            "description": "`principal` is required the first time a principal is seen.",
        }),
    );
    schemas.insert(
        "DirectoryMember".into(),
        json!({
            "type": "object",
            "properties": {"groupId": {"type": "string"}, "principalId": {"type": "string"}, "provisionedBy": {"type": "string"}},
        }),
    );
    schemas.insert(
        "Step".into(),
        json!({
            "type": "object",
            "description": "One step of a push. `http` holds the SCIM call's method, path, status and duration only: never a credential or a body.",
            "required": ["step", "status"],
            "properties": {
                "step": {"type": "string", "examples": ["match_user", "create_user", "resolve_group", "add_member", "remove_member"]},
                "status": {"type": "string", "examples": ["success", "failure", "retry"]},
                "detail": {"type": "string"},
                "http": {
                    "type": "object", "required": ["method", "path", "durationMs"],
                    "properties": {"method": {"type": "string"}, "path": {"type": "string"}, "status": nullable("integer"), "durationMs": {"type": "integer"}},
                },
            },
        }),
    );
    schemas.insert(
        "LogEntry".into(),
        json!({
            "type": "object",
            "required": ["id", "time", "appId", "appName", "trigger", "action", "status", "attempt", "steps"],
            "properties": {
                "id": {"type": "string"}, "time": time, "appId": {"type": "string"}, "appName": {"type": "string"},
                "trigger": {"type": "string", "enum": ["activation", "deactivation", "expiry", "sync", "on_demand", "directory", "deprovision"]},
                "cycleId": nullable("string"), "eventId": nullable("string"), "principalId": nullable("string"),
                "userPrincipalName": nullable("string"), "groupId": nullable("string"),
                "action": {"type": "string", "examples": ["add_member", "remove_member", "create_user", "update_user", "disable_user"]},
                "status": {"type": "string", "enum": ["success", "failure", "skipped", "deferred"]},
                "reason": nullable("string"), "deferredUntil": time_or_null,
                "targetUserId": nullable("string"), "targetGroupId": nullable("string"),
                "attempt": {"type": "integer"}, "durationMs": nullable("integer"),
                "latencyMs": {"type": ["integer", "null"], "description": "From the webhook's arrival to the target's confirmation"},
                "steps": {"type": "array", "items": schema_ref("Step")},
            },
        }),
    );
    schemas.insert(
        "LogPage".into(),
        json!({
            "type": "object", "required": ["items", "nextCursor"],
            "properties": {
                "items": {"type": "array", "items": schema_ref("LogEntry"), "description": "Newest first"},
                "nextCursor": {"type": ["string", "null"], "description": "Pass as `cursor` for the next (older) page; null on the last page"},
            },
        }),
    );
    schemas.insert(
        "Activation".into(),
        json!({
            "type": "object", "required": ["eventId", "events", "apps"],
            "properties": {
                "eventId": {"type": "string"},
                "events": {"type": "array", "description": "Each status received for this id", "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"}, "status": {"type": "string"}, "receivedAt": time,
                        "outcome": {"type": "string"}, "reason": nullable("string"), "body": schema_ref("PimEvent"),
                    },
                }},
                "apps": {"type": "array", "description": "Per app the event went to: its current state", "items": {
                    "type": "object",
                    "properties": {
                        "appId": {"type": "string"}, "appName": {"type": "string"},
                        "state": {"type": "string", "enum": ["pushed", "deferred", "failed", "skipped", "pending"]},
                        "status": {"type": "string"}, "action": {"type": "string"}, "reason": nullable("string"),
                        "deferredUntil": time_or_null, "latencyMs": nullable("integer"), "time": time,
                        "entries": {"type": "array", "items": schema_ref("LogEntry")},
                    },
                }},
            },
        }),
    );
    schemas.insert(
        "AuditEntry".into(),
        json!({
            "type": "object", "required": ["time", "actor", "action", "target"],
            "properties": {
                "time": time,
                "actor": {"type": "string", "description": "The name of the token used"},
                "action": {"type": "string", "examples": ["app.create", "app.update", "app.delete", "group.assign", "group.unassign", "app.sync", "app.provision_on_demand", "app.quarantine_clear", "token.create", "token.revoke", "directory.put_member", "directory.delete_member"]},
                "target": {"type": "string"},
                "detail": {"type": "object"},
            },
        }),
    );
    schemas.insert(
        "AuditPage".into(),
        json!({
            "type": "object", "required": ["items", "nextCursor"],
            "properties": {
                "items": {"type": "array", "items": schema_ref("AuditEntry"), "description": "Newest first"},
                "nextCursor": {"type": ["string", "null"], "description": "Pass as `cursor` for the next (older) page; null on the last page"},
            },
        }),
    );
    schemas.insert(
        "TokenRequest".into(),
        json!({
            "type": "object", "required": ["name", "role"],
            "properties": {"name": {"type": "string", "pattern": "\\S", "description": "The person or system holding it; unique among live tokens, and not `admin`"}, "role": {"type": "string", "enum": ["admin", "operator", "app_owner"]}},
        }),
    );
    schemas.insert(
        "TokenCreated".into(),
        json!({
            "type": "object", "required": ["id", "name", "role", "token"],
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "role": {"type": "string"}, "token": {"type": "string", "description": "Shown this once; stored hashed"}},
        }),
    );
    schemas.insert(
        "Token".into(),
        json!({
            "type": "object",
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "role": {"type": "string"}, "createdAt": time},
        }),
    );
    schemas.insert("TokenList".into(), json!(items_of("Token")));
    Value::Object(schemas)
}

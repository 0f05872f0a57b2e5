//! `scim-bridge apply` and `scim-bridge export` (SPEC §9): a configuration document kept as a file
//! (YAML or JSON), sent to a running bridge's `PUT /v1/config` and read from its `GET /v1/config`,
//! with `SCIM_BRIDGE_URL` and `SCIM_BRIDGE_TOKEN`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::http::model::{ConfigDocument, ConfigPlan, PlannedApp};

/// The bridge's API, as the environment names it.
struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn from_env() -> anyhow::Result<Self> {
        let url = std::env::var("SCIM_BRIDGE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
        let token = std::env::var("SCIM_BRIDGE_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .context(
                "SCIM_BRIDGE_TOKEN is not set: an admin token of the bridge (scim-bridge token create --role admin)",
            )?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            token,
            http: crate::http_client(),
        })
    }

    /// The answer's body when it is a success; otherwise an error with the problem's detail.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(Option<String>, String)> {
        let answer = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reaching the bridge at {}", self.url))?;
        let status = answer.status();
        let etag = answer
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = answer.text().await.unwrap_or_default();
        if !status.is_success() {
            let detail = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|p| p["detail"].as_str().map(String::from))
                .unwrap_or(body);
            bail!("the bridge answered {status}: {detail}");
        }
        Ok((etag, body))
    }

    async fn put(
        &self,
        document: &Value,
        dry_run: bool,
        prune: bool,
        if_match: Option<&str>,
    ) -> anyhow::Result<(Option<String>, ConfigPlan)> {
        let mut request = self
            .http
            .put(format!("{}/v1/config", self.url))
            .query(&[("dryRun", dry_run), ("prune", prune)])
            .json(document);
        if let Some(etag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, etag);
        }
        let (etag, body) = self.send(request).await?;
        let plan = serde_json::from_str(&body).context("the bridge's plan is not what this version reads")?;
        Ok((etag, plan))
    }
}

/// Replaces every `${NAME}` in the document's strings with the variable `NAME` from `lookup`;
/// answers the names that `lookup` does not know (nothing is replaced then).
pub fn substitute(document: &mut Value, lookup: &dyn Fn(&str) -> Option<String>) -> BTreeSet<String> {
    let mut missing = BTreeSet::new();
    substitute_in(document, lookup, &mut missing);
    missing
}

fn substitute_in(value: &mut Value, lookup: &dyn Fn(&str) -> Option<String>, missing: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if s.contains("${") => *s = replace_variables(s, lookup, missing),
        Value::Array(items) => items.iter_mut().for_each(|v| substitute_in(v, lookup, missing)),
        Value::Object(map) => map.values_mut().for_each(|v| substitute_in(v, lookup, missing)),
        _ => {}
    }
}

fn replace_variables(text: &str, lookup: &dyn Fn(&str) -> Option<String>, missing: &mut BTreeSet<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &after[..end];
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match (valid, lookup(name)) {
            (true, Some(value)) => out.push_str(&value),
            (true, None) => {
                missing.insert(name.to_string());
                out.push_str(&rest[start..start + 3 + end]);
            }
            (false, _) => out.push_str(&rest[start..start + 3 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Reads a document file, YAML (`.yaml`, `.yml`) or JSON (`.json`), with its variables replaced
/// from the environment; a missing variable is an error naming it.
pub fn read_document(file: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut document: Value = match extension.as_str() {
        "yaml" | "yml" => serde_norway::from_str(&text).with_context(|| format!("{} is not YAML", file.display()))?,
        "json" => serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?,
        _ => bail!(
            "{}: the document's name must end in .yaml, .yml or .json (that is how its format is read)",
            file.display()
        ),
    };
    let missing = substitute(&mut document, &|name| std::env::var(name).ok());
    if !missing.is_empty() {
        bail!(
            "{}: no environment variable {} (nothing was sent)",
            file.display(),
            missing.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(document)
}

/// A change of configuration (what a dry run's exit code reports).
fn is_change(app: &PlannedApp) -> bool {
    matches!(app.action.as_str(), "create" | "update" | "delete")
}

/// Something applying writes: a change, or an app the document starts to manage.
fn writes(app: &PlannedApp) -> bool {
    is_change(app) || app.adopted
}

/// One line of the plan's table: what changes at the app.
fn details(app: &PlannedApp) -> String {
    let mut parts: Vec<String> = app
        .changes
        .iter()
        .map(|c| {
            if c.secret {
                format!("{} (secret, changed)", c.field)
            } else {
                c.field.clone()
            }
        })
        .collect();
    if let Some(groups) = &app.groups {
        for g in &groups.added {
            parts.push(format!("+group {}", g.group_id));
        }
        for g in &groups.removed {
            parts.push(format!(
                "-group {} ({} provisioned members lose it)",
                g.group_id, g.provisioned_members
            ));
        }
        for g in &groups.renamed {
            parts.push(format!("~group {} ({} -> {})", g.group_id, g.from, g.to));
        }
    }
    if let Some(members) = app.provisioned_members {
        parts.push(format!("{members} provisioned members removed at the target first"));
    }
    if app.adopted {
        parts.push("registered through the API: this document manages it once applied".into());
    }
    match app.action.as_str() {
        "unmanaged" => parts.push("registered through the API: never pruned".into()),
        "kept" => parts.push("in no entry: --prune would delete it".into()),
        _ => {}
    }
    parts.join("; ")
}

/// The plan as a table.
pub fn plan_table(plan: &ConfigPlan) -> String {
    let width = plan.apps.iter().map(|a| a.name.len()).max().unwrap_or(3).max(3);
    let mut out = format!("{:<10} {:<width$} DETAILS\n", "ACTION", "APP");
    for app in &plan.apps {
        out.push_str(&format!("{:<10} {:<width$} {}\n", app.action, app.name, details(app)));
    }
    for name in &plan.shared_names {
        out.push_str(&format!(
            "note: more than one app is named {name:?}; an entry matches one only by its id\n"
        ));
    }
    for warning in &plan.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

/// `scim-bridge apply`: plans the file's document, and unless `dry_run` applies it if the apps
/// did not change since the plan (`If-Match`). Answers the exit code: 0 applied or nothing
/// differs, 2 a dry run found changes.
pub async fn apply(file: &Path, dry_run: bool, prune: bool) -> anyhow::Result<i32> {
    let document = read_document(file)?;
    let api = Api::from_env()?;
    let (etag, plan) = api.put(&document, true, prune, None).await?;
    print!("{}", plan_table(&plan));
    let changes = plan.apps.iter().filter(|a| is_change(a)).count();
    if dry_run {
        println!("dry run: {changes} apps would change");
        return Ok(if changes > 0 { 2 } else { 0 });
    }
    if !plan.apps.iter().any(writes) {
        println!("nothing to apply: the bridge already holds this document");
        return Ok(0);
    }
    let (_, applied) = api.put(&document, false, prune, etag.as_deref()).await?;
    let done = applied.apps.iter().filter(|a| is_change(a)).count();
    let adopted = applied.apps.iter().filter(|a| a.adopted).count();
    println!("applied: {done} apps changed, {adopted} more now managed by this document");
    Ok(0)
}

/// `scim-bridge export`: the bridge's apps as a document, YAML or JSON, on standard output.
pub async fn export(format: &str) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    let (_, body) = api.send(api.http.get(format!("{}/v1/config", api.url))).await?;
    let document: ConfigDocument =
        serde_json::from_str(&body).context("the bridge's document is not what this version reads")?;
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&document)?),
        _ => print!("{}", serde_norway::to_string(&document)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_replaced_and_the_missing_ones_named() {
        let mut doc =
            serde_json::json!({"apps": [{"auth": {"token": "${A_TOKEN}"}, "name": "x-${SUFFIX}-${NOPE}", "n": 1}]});
        let missing = substitute(&mut doc, &|name| match name {
            "A_TOKEN" => Some("secret".into()),
            "SUFFIX" => Some("prod".into()),
            _ => None,
        });
        assert_eq!(missing.into_iter().collect::<Vec<_>>(), vec!["NOPE".to_string()]);
        assert_eq!(doc["apps"][0]["auth"]["token"], "secret");
        assert_eq!(doc["apps"][0]["name"], "x-prod-${NOPE}");
        let mut doc = serde_json::json!("${not a name} and ${unclosed");
        assert!(substitute(&mut doc, &|_| None).is_empty());
        assert_eq!(doc, "${not a name} and ${unclosed");
    }
}

//! An app's attribute mapping: which SCIM User attribute each expression feeds, and the User
//! built from a principal's attributes.
//!
//! Targets (SPEC §4): `userName`, `externalId`, `displayName`, `nickName`, `title`,
//! `name.formatted`, `name.givenName`, `name.familyName`, `emails[type eq "work"].value`,
//! `phoneNumbers[type eq "work"].value`, or `<urn>:attr` / `<urn>:attr.sub` of a schema extension.
//! SCIM attribute names are case-insensitive (RFC 7643 §2.1), so core paths are matched ignoring
//! ASCII case and kept in their canonical spelling; a core path written with the core schema URN
//! (`urn:ietf:params:scim:schemas:core:2.0:User:userName`) is the same target. `active` is the
//! bridge's to set and is refused.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod expr;

use self::expr::Expr;

pub const CORE_USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

/// A supported SCIM User attribute path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    UserName,
    ExternalId,
    DisplayName,
    NickName,
    Title,
    NameFormatted,
    NameGivenName,
    NameFamilyName,
    /// `emails[type eq "work"].value`, sent as the primary work email.
    WorkEmail,
    /// `phoneNumbers[type eq "work"].value`, sent as the primary work phone number.
    WorkPhone,
    /// `urn:...:attribute` or `urn:...:attribute.subAttribute` of a schema extension.
    Extension {
        urn: String,
        attribute: String,
        sub_attribute: Option<String>,
    },
}

/// Why a target path is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    pub message: String,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TargetError {}

const CORE_TARGETS: &str = "userName, externalId, displayName, nickName, title, name.formatted, name.givenName, \
     name.familyName, emails[type eq \"work\"].value, phoneNumbers[type eq \"work\"].value, or urn:...:attribute of a \
     schema extension";

/// Whether `path` is a SCIM User attribute the mapping may write.
pub fn is_supported_target(path: &str) -> bool {
    Target::parse(path).is_ok()
}

impl Target {
    pub fn parse(path: &str) -> Result<Target, TargetError> {
        let refuse = |message: String| Err(TargetError { message });
        if path.len() > 4 && path[..4].eq_ignore_ascii_case("urn:") {
            let Some((urn, attribute_path)) = path.rsplit_once(':') else {
                unreachable!("the path starts with \"urn:\"");
            };
            if urn.eq_ignore_ascii_case(CORE_USER_SCHEMA) {
                return Target::core(attribute_path);
            }
            if urn.split(':').count() < 3 || urn.split(':').any(|part| part.is_empty() || !is_urn_text(part)) {
                return refuse(format!("{path}: {urn} is not a schema URN (urn:<namespace>:<name>)"));
            }
            let (attribute, sub_attribute) = match attribute_path.split_once('.') {
                Some((attribute, sub)) => (attribute, Some(sub)),
                None => (attribute_path, None),
            };
            if !is_attribute_name(attribute) || sub_attribute.is_some_and(|sub| !is_attribute_name(sub)) {
                return refuse(format!(
                    "{path}: after the URN comes an attribute name or attribute.subAttribute \
                     (a letter, then letters, digits, '-' or '_')"
                ));
            }
            return Ok(Target::Extension {
                urn: urn.to_owned(),
                attribute: attribute.to_owned(),
                sub_attribute: sub_attribute.map(str::to_owned),
            });
        }
        Target::core(path)
    }

    fn core(path: &str) -> Result<Target, TargetError> {
        Ok(match path.to_ascii_lowercase().as_str() {
            "username" => Target::UserName,
            "externalid" => Target::ExternalId,
            "displayname" => Target::DisplayName,
            "nickname" => Target::NickName,
            "title" => Target::Title,
            "name.formatted" => Target::NameFormatted,
            "name.givenname" => Target::NameGivenName,
            "name.familyname" => Target::NameFamilyName,
            "emails[type eq \"work\"].value" => Target::WorkEmail,
            "phonenumbers[type eq \"work\"].value" => Target::WorkPhone,
            "active" => {
                return Err(TargetError {
                    message: "active is not a mapping target: the bridge sets it (see outOfScope)".to_owned(),
                });
            }
            _ => {
                return Err(TargetError {
                    message: format!("unsupported target {path}; supported: {CORE_TARGETS}"),
                });
            }
        })
    }

    /// The canonical path, as the API shows it.
    pub fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Target::UserName => "userName",
            Target::ExternalId => "externalId",
            Target::DisplayName => "displayName",
            Target::NickName => "nickName",
            Target::Title => "title",
            Target::NameFormatted => "name.formatted",
            Target::NameGivenName => "name.givenName",
            Target::NameFamilyName => "name.familyName",
            Target::WorkEmail => "emails[type eq \"work\"].value",
            Target::WorkPhone => "phoneNumbers[type eq \"work\"].value",
            Target::Extension {
                urn,
                attribute,
                sub_attribute,
            } => {
                return Cow::Owned(match sub_attribute {
                    Some(sub) => format!("{urn}:{attribute}.{sub}"),
                    None => format!("{urn}:{attribute}"),
                });
            }
        })
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(path: &str) -> Result<Self, Self::Err> {
        Target::parse(path)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

fn is_attribute_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Characters RFC 8141 allows in a URN's parts (percent-encoding included), without ':'.
fn is_urn_text(part: &str) -> bool {
    part.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~%!$&'()*+,;=@/?#".contains(c))
}

/// The SCIM User for mapped values: `{"schemas": [core, extensions...], ...}`. NULL and empty
/// values are left out, and an extension's URN is listed in `schemas` only when one of its
/// attributes has a value. `active` is not added: that is the caller's.
pub fn build_user<'t, V: AsRef<str>>(values: impl IntoIterator<Item = (&'t Target, Option<V>)>) -> Value {
    let mut user = Map::new();
    let mut schemas = vec![Value::from(CORE_USER_SCHEMA)];
    for (target, value) in values {
        let Some(value) = value else { continue };
        let value = value.as_ref();
        if value.is_empty() {
            continue;
        }
        let value = Value::from(value);
        let (attribute, slot) = match target {
            Target::UserName => ("userName", &mut user),
            Target::ExternalId => ("externalId", &mut user),
            Target::DisplayName => ("displayName", &mut user),
            Target::NickName => ("nickName", &mut user),
            Target::Title => ("title", &mut user),
            Target::NameFormatted => ("formatted", object(&mut user, "name")),
            Target::NameGivenName => ("givenName", object(&mut user, "name")),
            Target::NameFamilyName => ("familyName", object(&mut user, "name")),
            Target::WorkEmail | Target::WorkPhone => {
                let attribute = if *target == Target::WorkEmail {
                    "emails"
                } else {
                    "phoneNumbers"
                };
                let entry = serde_json::json!([{ "value": value, "type": "work", "primary": true }]);
                user.insert(attribute.to_owned(), entry);
                continue;
            }
            Target::Extension {
                urn,
                attribute,
                sub_attribute,
            } => {
                if !schemas.iter().any(|schema| schema == urn.as_str()) {
                    schemas.push(Value::from(urn.as_str()));
                }
                let extension = object(&mut user, urn);
                match sub_attribute {
                    Some(sub) => (sub.as_str(), object(extension, attribute)),
                    None => (attribute.as_str(), extension),
                }
            }
        };
        slot.insert(attribute.to_owned(), value);
    }
    user.insert("schemas".to_owned(), Value::Array(schemas));
    Value::Object(user)
}

/// The object under `key`, created if missing (or replacing a non-object value).
fn object<'m>(map: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
    let slot = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(object) => object,
        _ => unreachable!("the slot was just made an object"),
    }
}

/// A principal's attributes for evaluation: every field of the event's `principal`, plus
/// `objectId`. Strings are kept, booleans become `"True"`/`"False"`, numbers their JSON text;
/// null, arrays and objects are left out (NULL).
pub fn principal_attributes(principal: &Map<String, Value>, object_id: &str) -> HashMap<String, String> {
    let mut attributes: HashMap<String, String> = principal
        .iter()
        .filter_map(|(name, value)| {
            let value = match value {
                Value::String(value) => value.clone(),
                Value::Bool(true) => "True".to_owned(),
                Value::Bool(false) => "False".to_owned(),
                Value::Number(number) => number.to_string(),
                Value::Null | Value::Array(_) | Value::Object(_) => return None,
            };
            Some((name.clone(), value))
        })
        .collect();
    attributes.insert("objectId".to_owned(), object_id.to_owned());
    attributes
}

/// When an entry is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Apply {
    #[default]
    Always,
    /// Only when the user is created at the target.
    OnCreate,
}

/// One entry of an app's `attributeMapping`, as the API carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MappingEntry {
    /// A SCIM User attribute path (`userName`, `name.givenName`, `emails[type eq "work"].value`,
    /// or `<extension URN>:<attribute>`).
    #[schema(example = "userName")]
    pub target: String,
    /// An expression in the syntax of Microsoft Entra ID's attribute-mapping expressions.
    #[schema(example = "Join(\".\", ToLower([givenName]), ToLower([surname]))")]
    pub source: String,
    #[serde(default)]
    pub apply: Apply,
}

impl MappingEntry {
    fn new(target: &str, source: &str) -> MappingEntry {
        MappingEntry {
            target: target.to_owned(),
            source: source.to_owned(),
            apply: Apply::Always,
        }
    }
}

/// The default `attributeMapping` of SPEC §4.
pub fn default_mapping() -> Vec<MappingEntry> {
    vec![
        MappingEntry::new("userName", "[userPrincipalName]"),
        MappingEntry::new("externalId", "[objectId]"),
        MappingEntry::new("displayName", "[displayName]"),
        MappingEntry::new("name.formatted", "[displayName]"),
        MappingEntry::new("name.givenName", "[givenName]"),
        MappingEntry::new("name.familyName", "[surname]"),
        MappingEntry::new("emails[type eq \"work\"].value", "[mail]"),
    ]
}

/// Why a mapping is refused (422): which entry, and where in its `source` when the expression is
/// at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    /// 0-based index into the list; `None` when the list as a whole is at fault (no `userName`).
    pub entry: Option<usize>,
    pub target: Option<String>,
    /// 0-based character offset into the entry's `source`.
    pub position: Option<usize>,
    pub message: String,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(entry) = self.entry {
            write!(f, "attributeMapping[{entry}]")?;
            if let Some(target) = &self.target {
                write!(f, " ({target})")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)?;
        if let Some(position) = self.position {
            write!(f, " (at character {position} of source)")?;
        }
        Ok(())
    }
}

impl std::error::Error for MappingError {}

/// A mapped `userName` that came out NULL or empty: the push fails with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyUserName;

impl fmt::Display for EmptyUserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the mapped userName is empty for this principal")
    }
}

impl std::error::Error for EmptyUserName {}

/// A validated mapping: each target with its parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub target: Target,
    pub source: Expr,
    pub apply: Apply,
}

impl Mapping {
    /// Validates every entry (target, expression) and that `userName` is mapped exactly once.
    pub fn compile(entries: &[MappingEntry]) -> Result<Mapping, MappingError> {
        let mut rules: Vec<Rule> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let refuse = |position, message| MappingError {
                entry: Some(index),
                target: Some(entry.target.clone()),
                position,
                message,
            };
            let target = Target::parse(&entry.target).map_err(|error| refuse(None, error.message))?;
            if let Some(earlier) = rules.iter().position(|rule| rule.target == target) {
                return Err(refuse(
                    None,
                    format!("{target} is already mapped by attributeMapping[{earlier}]"),
                ));
            }
            let source = Expr::parse(&entry.source).map_err(|error| refuse(Some(error.position), error.message))?;
            rules.push(Rule {
                target,
                source,
                apply: entry.apply,
            });
        }
        if !rules.iter().any(|rule| rule.target == Target::UserName) {
            return Err(MappingError {
                entry: None,
                target: None,
                position: None,
                message: "the mapping must map userName".to_owned(),
            });
        }
        Ok(Mapping { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The value mapped to `target`, NULL when nothing maps it.
    pub fn value<'a>(&'a self, target: &Target, attrs: &dyn Fn(&str) -> Option<&'a str>) -> Option<Cow<'a, str>> {
        self.rules
            .iter()
            .find(|rule| rule.target == *target)
            .and_then(|rule| rule.source.eval(attrs))
    }

    /// The User to send: every `always` entry, and the `onCreate` ones when `creating`.
    pub fn user<'a>(&'a self, attrs: &dyn Fn(&str) -> Option<&'a str>, creating: bool) -> Result<Value, EmptyUserName> {
        if self
            .value(&Target::UserName, attrs)
            .is_none_or(|user_name| user_name.is_empty())
        {
            return Err(EmptyUserName);
        }
        let values = self
            .rules
            .iter()
            .filter(|rule| creating || rule.apply == Apply::Always)
            .map(|rule| (&rule.target, rule.source.eval(attrs)));
        Ok(build_user(values))
    }

    /// Every principal attribute the mapping reads.
    pub fn attributes(&self) -> BTreeSet<&str> {
        self.rules.iter().flat_map(|rule| rule.source.attributes()).collect()
    }
}

/// The targets whose mapped values find an existing user when none is given (SPEC §4).
pub const DEFAULT_MATCHING: [&str; 2] = ["externalId", "userName"];

impl Target {
    /// A SCIM filter finding users whose value of this target is `literal` (a quoted, escaped
    /// string literal).
    pub fn filter(&self, literal: &str) -> String {
        match self {
            Target::WorkEmail => format!("emails[type eq \"work\" and value eq {literal}]"),
            Target::WorkPhone => format!("phoneNumbers[type eq \"work\" and value eq {literal}]"),
            other => format!("{} eq {literal}", other.path()),
        }
    }
}

/// An app's mapping compiled with its matching order: what a push uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMapping {
    pub mapping: Mapping,
    pub matching: Vec<Target>,
}

/// Why an app's `attributeMapping` or `matching` is refused: the field to name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMappingError {
    pub field: String,
    pub message: String,
}

impl AppMapping {
    /// Compiles an app's mapping (`None`: the default) and matching order (`None`: the
    /// default). Errors name the entry (`attributeMapping[2].source`) and the position.
    pub fn compile(
        entries: Option<&[MappingEntry]>,
        matching: Option<&[String]>,
    ) -> Result<AppMapping, AppMappingError> {
        let default = default_mapping();
        let mapping = Mapping::compile(entries.unwrap_or(&default)).map_err(|e| AppMappingError {
            field: match (e.entry, e.position) {
                (Some(i), Some(_)) => format!("attributeMapping[{i}].source"),
                (Some(i), None) => format!("attributeMapping[{i}].target"),
                (None, _) => "attributeMapping".into(),
            },
            message: match e.position {
                Some(p) => format!("{} (at character {p})", e.message),
                None => e.message,
            },
        })?;
        let names: Vec<&str> = match matching {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => DEFAULT_MATCHING.to_vec(),
        };
        let mut targets = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let target = Target::parse(name).map_err(|e| AppMappingError {
                field: format!("matching[{i}]"),
                message: e.message,
            })?;
            if !mapping.rules().iter().any(|rule| rule.target == target) {
                // The default order names externalId, which a custom mapping may leave out.
                if matching.is_none() {
                    continue;
                }
                return Err(AppMappingError {
                    field: format!("matching[{i}]"),
                    message: format!("{target} is not mapped, so it cannot find a user"),
                });
            }
            targets.push(target);
        }
        Ok(AppMapping {
            mapping,
            matching: targets,
        })
    }
}

/// The attributes of `new` (a User as the bridge would send it, `schemas` aside) that differ
/// from `old` (what was last sent, or what the target holds), as an object for a PATCH
/// `replace`. Attributes absent from `new` (their value came out empty) are left as they are.
pub fn changed_attributes(old: &Value, new: &Value) -> Map<String, Value> {
    let mut changes = Map::new();
    if let Some(fields) = new.as_object() {
        for (key, value) in fields {
            if key != "schemas" && !holds(old.get(key), value) {
                changes.insert(key.clone(), value.clone());
            }
        }
    }
    changes
}

/// Whether `held` already holds `wanted`: every sub-attribute of an object, and for a
/// multi-valued attribute an entry with the same `value` and `type`.
fn holds(held: Option<&Value>, wanted: &Value) -> bool {
    let Some(held) = held else {
        return false;
    };
    match wanted {
        Value::Object(fields) => fields.iter().all(|(k, v)| holds(held.get(k), v)),
        Value::Array(entries) => entries.iter().all(|entry| {
            held.as_array().is_some_and(|have| {
                have.iter()
                    .any(|h| h.get("value") == entry.get("value") && h.get("type") == entry.get("type"))
            })
        }),
        other => held == other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(target: &str, source: &str) -> MappingEntry {
        MappingEntry::new(target, source)
    }

    fn principal() -> HashMap<String, String> {
        let principal = json!({
            "userPrincipalName": "zoe.smith@contoso.com",
            "mail": "Zoe.Smith@contoso.com",
            "displayName": "Zoë Smith",
            "givenName": "Zoë",
            "surname": "Smith",
            "employeeId": 4711,
            "accountEnabled": true,
            "department": null,
            "proxyAddresses": ["smtp:a@b"],
        });
        principal_attributes(principal.as_object().unwrap(), "00aa00aa-bb11-cc22-dd33-44ee44ee44ee")
    }

    #[test]
    fn supported_targets_are_accepted() {
        let supported = [
            ("userName", Target::UserName),
            ("externalId", Target::ExternalId),
            ("displayName", Target::DisplayName),
            ("nickName", Target::NickName),
            ("title", Target::Title),
            ("name.formatted", Target::NameFormatted),
            ("name.givenName", Target::NameGivenName),
            ("name.familyName", Target::NameFamilyName),
            ("emails[type eq \"work\"].value", Target::WorkEmail),
            ("phoneNumbers[type eq \"work\"].value", Target::WorkPhone),
            ("USERNAME", Target::UserName),
            (
                "urn:ietf:params:scim:schemas:core:2.0:User:name.givenName",
                Target::NameGivenName,
            ),
        ];
        for (path, target) in supported {
            assert!(is_supported_target(path), "{path}");
            assert_eq!(Target::parse(path), Ok(target), "{path}");
        }
        let enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        assert_eq!(
            Target::parse(&format!("{enterprise}:manager.value")),
            Ok(Target::Extension {
                urn: enterprise.to_owned(),
                attribute: "manager".to_owned(),
                sub_attribute: Some("value".to_owned()),
            })
        );
        assert!(is_supported_target(&format!("{enterprise}:employeeNumber")));
        assert!(is_supported_target("urn:example:scim:custom:1.0:User:costCenter"));
    }

    #[test]
    fn unsupported_targets_are_refused_with_a_reason() {
        let refused = [
            ("active", "the bridge sets it"),
            (
                "urn:ietf:params:scim:schemas:core:2.0:User:active",
                "the bridge sets it",
            ),
            ("password", "unsupported target password"),
            ("emails[type eq \"home\"].value", "unsupported target"),
            ("name", "unsupported target"),
            ("", "unsupported target"),
            ("urn:x:employeeNumber", "not a schema URN"),
            ("urn:a::b:attr", "not a schema URN"),
            ("urn:a:b:User:", "attribute name"),
            ("urn:a:b:User:manager.value.x", "attribute name"),
            ("urn:a:b:User:1st", "attribute name"),
        ];
        for (path, reason) in refused {
            let error = Target::parse(path).expect_err(path);
            assert!(error.message.contains(reason), "{path}: {error}");
            assert!(!is_supported_target(path));
        }
    }

    #[test]
    fn target_paths_print_canonically() {
        for path in [
            "emails[type eq \"work\"].value",
            "urn:a:b:User:manager.value",
            "name.givenName",
        ] {
            assert_eq!(Target::parse(path).unwrap().to_string(), path);
        }
        assert_eq!(Target::parse("NAME.GIVENNAME").unwrap().to_string(), "name.givenName");
    }

    #[test]
    fn build_user_nests_core_and_extension_attributes() {
        let enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let targets: Vec<Target> = [
            "userName".to_owned(),
            "name.givenName".to_owned(),
            "name.familyName".to_owned(),
            "emails[type eq \"work\"].value".to_owned(),
            "phoneNumbers[type eq \"work\"].value".to_owned(),
            format!("{enterprise}:employeeNumber"),
            format!("{enterprise}:manager.value"),
            "urn:example:custom:User:costCenter".to_owned(),
        ]
        .iter()
        .map(|path| Target::parse(path).unwrap())
        .collect();
        let values = [
            "zoe",
            "Zoë",
            "Smith",
            "zoe@contoso.com",
            "+31 20 123",
            "4711",
            "mgr-id",
            "CC-1",
        ];
        let user = build_user(targets.iter().zip(values.iter().map(Some)));
        assert_eq!(
            user,
            json!({
                "schemas": [CORE_USER_SCHEMA, enterprise, "urn:example:custom:User"],
                "userName": "zoe",
                "name": { "givenName": "Zoë", "familyName": "Smith" },
                "emails": [{ "value": "zoe@contoso.com", "type": "work", "primary": true }],
                "phoneNumbers": [{ "value": "+31 20 123", "type": "work", "primary": true }],
                enterprise: { "employeeNumber": "4711", "manager": { "value": "mgr-id" } },
                "urn:example:custom:User": { "costCenter": "CC-1" },
            })
        );
    }

    #[test]
    fn build_user_leaves_out_null_and_empty_values_and_their_schemas() {
        let targets = [
            Target::UserName,
            Target::DisplayName,
            Target::NameGivenName,
            Target::WorkEmail,
            Target::parse("urn:example:custom:User:costCenter").unwrap(),
        ];
        let values = [Some("zoe"), Some(""), None, Some(""), None];
        let user = build_user(targets.iter().zip(values));
        assert_eq!(user, json!({ "schemas": [CORE_USER_SCHEMA], "userName": "zoe" }));
    }

    #[test]
    fn the_default_mapping_builds_the_expected_user() {
        let mapping = Mapping::compile(&default_mapping()).unwrap();
        let attrs = principal();
        let user = mapping.user(&|name| attrs.get(name).map(String::as_str), true).unwrap();
        assert_eq!(
            user,
            json!({
                "schemas": [CORE_USER_SCHEMA],
                "userName": "zoe.smith@contoso.com",
                "externalId": "00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
                "displayName": "Zoë Smith",
                "name": { "formatted": "Zoë Smith", "givenName": "Zoë", "familyName": "Smith" },
                "emails": [{ "value": "Zoe.Smith@contoso.com", "type": "work", "primary": true }],
            })
        );
        let names: Vec<&str> = mapping.attributes().into_iter().collect();
        assert_eq!(
            names,
            [
                "displayName",
                "givenName",
                "mail",
                "objectId",
                "surname",
                "userPrincipalName"
            ]
        );
    }

    #[test]
    fn principal_attributes_are_strings_with_booleans_as_true_and_false() {
        let attrs = principal();
        assert_eq!(attrs.get("employeeId").map(String::as_str), Some("4711"));
        assert_eq!(attrs.get("accountEnabled").map(String::as_str), Some("True"));
        assert_eq!(attrs.get("department"), None);
        assert_eq!(attrs.get("proxyAddresses"), None);
        assert_eq!(
            attrs.get("objectId").map(String::as_str),
            Some("00aa00aa-bb11-cc22-dd33-44ee44ee44ee")
        );
    }

    #[test]
    fn on_create_entries_are_sent_only_when_creating() {
        let mut entries = vec![entry("userName", "[userPrincipalName]")];
        entries.push(MappingEntry {
            apply: Apply::OnCreate,
            ..entry("title", "\"New hire\"")
        });
        let mapping = Mapping::compile(&entries).unwrap();
        let attrs = principal();
        let lookup = |name: &str| attrs.get(name).map(String::as_str);
        assert_eq!(mapping.user(&lookup, true).unwrap()["title"], json!("New hire"));
        assert_eq!(mapping.user(&lookup, false).unwrap().get("title"), None);
    }

    #[test]
    fn an_empty_user_name_fails_the_push() {
        let mapping = Mapping::compile(&[entry("userName", "[mail]")]).unwrap();
        assert_eq!(mapping.user(&|_| None, true), Err(EmptyUserName));
        assert_eq!(mapping.user(&|_| Some(""), false), Err(EmptyUserName));
    }

    #[test]
    fn expressions_can_feed_any_target() {
        let entries = [
            entry(
                "userName",
                r#"ToLower(Join("@", NormalizeDiacritics(StripSpaces(Join(".", [givenName], [surname]))), "contoso.com"))"#,
            ),
            entry(
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
                "[employeeId]",
            ),
            entry("title", r#"IIF([accountEnabled] = "True", "Active", "Inactive")"#),
        ];
        let mapping = Mapping::compile(&entries).unwrap();
        let attrs = principal();
        let user = mapping.user(&|name| attrs.get(name).map(String::as_str), true).unwrap();
        assert_eq!(user["userName"], json!("zoe.smith@contoso.com"));
        assert_eq!(
            user["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["employeeNumber"],
            json!("4711")
        );
        assert_eq!(user["title"], json!("Active"));
    }

    #[test]
    fn invalid_mappings_name_the_entry_and_position() {
        let with = |target: &str, source: &str| {
            let mut entries = default_mapping();
            entries.push(entry(target, source));
            Mapping::compile(&entries).unwrap_err()
        };
        let error = with("title", "Left([jobTitle] 3)");
        assert_eq!((error.entry, error.position), (Some(7), Some(16)));
        assert_eq!(
            error.to_string(),
            "attributeMapping[7] (title): unexpected '3' in the arguments: expected ',' or ')' (at character 16 of source)"
        );

        let error = with("active", "\"True\"");
        assert_eq!((error.entry, error.position), (Some(7), None));
        assert!(error.message.contains("the bridge sets it"));

        let error = with("name.givenName", "[givenName]");
        assert_eq!(error.entry, Some(7));
        assert!(
            error.message.contains("already mapped by attributeMapping[4]"),
            "{error}"
        );

        let error = with("title", "Frobnicate([a])");
        assert_eq!((error.entry, error.position), (Some(7), Some(0)));

        let error = Mapping::compile(&[entry("displayName", "[displayName]")]).unwrap_err();
        assert_eq!(
            (error.entry, error.to_string().as_str()),
            (None, "the mapping must map userName")
        );
    }

    #[test]
    fn mapping_entries_deserialize_with_apply_defaulting_to_always() {
        let entries: Vec<MappingEntry> = serde_json::from_value(json!([
            { "target": "userName", "source": "[userPrincipalName]" },
            { "target": "title", "source": "\"x\"", "apply": "onCreate" },
        ]))
        .unwrap();
        assert_eq!(entries[0].apply, Apply::Always);
        assert_eq!(entries[1].apply, Apply::OnCreate);
        assert_eq!(serde_json::to_value(&entries[1]).unwrap()["apply"], json!("onCreate"));
    }
}

//! Attribute-mapping expressions in the syntax of Microsoft Entra ID provisioning.
//!
//! An expression is parsed and validated once ([`Expr::parse`]) and evaluated against a
//! principal's attributes as often as needed ([`Expr::eval`]). Evaluation is a pure function of
//! the attributes: it borrows attribute values and string constants, and allocates only when a
//! function builds a new string.
//!
//! ```text
//! expression = attribute | string | integer | call
//! attribute  = "[" name "]"                      name: no whitespace, control, '[', ']', '"'
//! string     = '"' { char | '\"' | '\\' } '"'     no other escapes
//! integer    = [ "-" ] digit { digit }            its decimal text: 007 is "7"
//! call       = Name "(" [ argument { "," argument } ] ")"
//! argument   = [ expression ]                     an empty argument is absent
//! condition  = expression [ ( "=" | "<>" | "<" | "<=" | ">" | ">=" ) expression ]
//! ```
//!
//! A `condition` is allowed only as the first argument of `IIF`. Names of functions and
//! attributes are case-sensitive. Whitespace may appear between tokens.
//!
//! Values are `Option<Cow<str>>`: `None` is NULL (an attribute the principal lacks). Booleans are
//! the strings `"True"` and `"False"`.
//!
//! Error positions ([`ParseError::position`]) are **0-based character offsets** into the
//! expression, counted in Unicode scalar values (not bytes): `Left([mail] 3)` reports position
//! 12, the `3`.
//!
//! # Edge cases
//!
//! Where Microsoft's reference leaves a case open, this module decides:
//!
//! - Characters are Unicode scalar values: `Left`, `Mid` and `Word` never split a character
//!   (Entra, on .NET, counts UTF-16 units, which differs only outside the Basic Multilingual Plane).
//! - An argument read as a number (`Left`'s numChars, `Mid`'s start and length, `Word`'s
//!   wordNumber) is an integer after trimming surrounding whitespace: optional sign, ASCII digits,
//!   64 bits. A string constant there that is not an integer is a validation error; a computed
//!   value that is not an integer (or is NULL) makes the function NULL.
//! - `Append`: a NULL operand counts as `""`; the result is NULL only when both are NULL.
//! - `Coalesce`: an empty string is a value, not NULL, so it is returned (as documented: "the
//!   first source value that isn't NULL").
//! - `IIF`: NULL compares as `""`, so `IIF([country]="","Other",[country])` works (Entra documents
//!   that condition as failing). `=` and `<>` compare case-sensitively. When both sides are
//!   integers all six operators compare numerically (`"10" > "9"`, `"007" = "7"`); otherwise
//!   they compare strings ordinally, by code point (integers beyond 64 bits compare as strings).
//! - A condition without an operator, and `Not`'s source, are true when the value is `"True"`,
//!   ignoring ASCII case; anything else, NULL included, is false (`Not` of NULL is `"True"`).
//! - `Join`: NULL and empty sources are skipped; a NULL separator is `""`; joining nothing
//!   gives `""`.
//! - `Left`: as documented, numChars 0 gives `""`, a negative count gives the whole string, a
//!   count past the end gives the whole string, and a NULL string gives `""`.
//! - `Mid`: a NULL source is NULL; a length past the end stops at the end (documented); a start
//!   past the end gives `""`; a start below 1 or a negative length is an invalid call and gives
//!   NULL, so the attribute is left out.
//! - `NormalizeDiacritics`: a Latin letter with diacritics becomes its base letter (canonical
//!   decomposition, marks dropped; a combining mark that follows a Latin letter is dropped too);
//!   `æ Æ ø Ø œ Œ ß ẞ ł Ł ı đ Đ` become `ae AE oe OE oe OE ss SS l L i d D`; other scripts
//!   (Greek, Cyrillic, ...) are left as they are.
//! - `Replace` (plain-string form only): case-sensitive, every non-overlapping occurrence, left to
//!   right; a NULL source is NULL; a NULL or empty oldValue leaves the source unchanged; a NULL
//!   replacementValue is `""`.
//! - `StripSpaces` removes U+0020 only (as documented), not tabs or other whitespace.
//! - `Switch` needs at least one key/value pair and an even number of arguments: a key without a
//!   value is a validation error. An absent defaultValue (`Switch([a], , "k", "v")`) is NULL. A
//!   NULL source or key compares as `""` (the documented way to match an empty source), case-
//!   sensitively; only the chosen value is evaluated.
//! - `ToLower`/`ToUpper` use Unicode simple one-to-one case mappings, as .NET's invariant culture
//!   does (`ToUpper("ß")` is `"ß"`); the optional culture argument is accepted and ignored.
//! - `Word`: as documented, wordNumber below 1, a NULL string, or too few words give `""`. Runs of
//!   delimiters make no empty words; a string with no delimiter in it is one word; NULL or empty
//!   delimiters make the whole string one word.
//! - Also accepted from Entra's list because they cost nothing: `IsNull(source)`, and
//!   `IgnoreFlowIfNullOrEmpty(source)`, which returns its source (NULL and empty values are left
//!   out of the User anyway).
//! - Expressions nest at most 64 calls deep, so a hostile expression cannot exhaust the stack.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use unicode_normalization::char::{decompose_canonical, is_combining_mark};

/// How deep calls may nest; parsing and evaluation recurse once per level.
const MAX_DEPTH: usize = 64;

/// A parsed and validated expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `[name]`: the attribute's value, NULL when the principal lacks it.
    Attribute(String),
    /// A string constant, or an integer literal as its decimal text.
    Constant(String),
    Append {
        source: Box<Expr>,
        suffix: Box<Expr>,
    },
    Coalesce(Vec<Expr>),
    IgnoreFlowIfNullOrEmpty(Box<Expr>),
    Iif {
        condition: Box<Condition>,
        if_true: Box<Expr>,
        if_false: Box<Expr>,
    },
    IsNull(Box<Expr>),
    IsNullOrEmpty(Box<Expr>),
    IsPresent(Box<Expr>),
    Join {
        separator: Box<Expr>,
        sources: Vec<Expr>,
    },
    Left {
        source: Box<Expr>,
        num_chars: Box<Expr>,
    },
    Mid {
        source: Box<Expr>,
        start: Box<Expr>,
        length: Box<Expr>,
    },
    NormalizeDiacritics(Box<Expr>),
    Not(Box<Expr>),
    /// The plain-string form `Replace(source, oldValue, , , replacementValue, , )`.
    Replace {
        source: Box<Expr>,
        old_value: Box<Expr>,
        replacement_value: Box<Expr>,
    },
    StripSpaces(Box<Expr>),
    Switch {
        source: Box<Expr>,
        default: Option<Box<Expr>>,
        cases: Vec<(Expr, Expr)>,
    },
    ToLower(Box<Expr>),
    ToUpper(Box<Expr>),
    Word {
        source: Box<Expr>,
        word_number: Box<Expr>,
        delimiters: Box<Expr>,
    },
}

/// The first argument of `IIF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// True when the value is `"True"` (ASCII case ignored).
    Value(Expr),
    Compare {
        left: Expr,
        op: CompareOp,
        right: Expr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Why an expression was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 0-based character offset (Unicode scalar values) into the expression.
    pub position: usize,
    pub kind: ParseErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// A character that cannot start or continue the expression here.
    UnexpectedCharacter,
    /// The expression stops where more was expected (an argument, `)`, ...).
    UnexpectedEnd,
    UnclosedString,
    InvalidEscape,
    UnclosedAttribute,
    InvalidAttributeName,
    InvalidInteger,
    UnknownFunction,
    WrongArgumentCount,
    /// An argument that must be present is empty, or one that must be empty is present.
    InvalidArgument,
    /// `Replace` in a form other than the plain-string one.
    UnsupportedReplaceForm,
    /// A comparison anywhere but the condition of `IIF`.
    MisplacedComparison,
    TooDeep,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.position)
    }
}

impl std::error::Error for ParseError {}

impl FromStr for Expr {
    type Err = ParseError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        Expr::parse(source)
    }
}

impl Expr {
    /// Parses and validates an expression: syntax, function names, argument counts, the form of
    /// `Replace`, and constant numeric arguments.
    pub fn parse(source: &str) -> Result<Expr, ParseError> {
        let mut parser = Parser {
            src: source,
            pos: 0,
            depth: 0,
        };
        parser.skip_whitespace();
        if parser.peek().is_none() {
            return Err(parser.error_at(parser.pos, ParseErrorKind::UnexpectedEnd, "the expression is empty"));
        }
        let expr = parser.expression()?;
        parser.skip_whitespace();
        match parser.peek() {
            None => Ok(expr),
            Some('=' | '<' | '>') => Err(parser.misplaced_comparison()),
            Some(c) => Err(parser.error_at(
                parser.pos,
                ParseErrorKind::UnexpectedCharacter,
                format!("unexpected {} after the end of the expression", describe(c)),
            )),
        }
    }

    /// Evaluates the expression; `attrs` answers an attribute's value, or `None` when the
    /// principal lacks it. `None` in the result is NULL.
    pub fn eval<'a>(&'a self, attrs: &dyn Fn(&str) -> Option<&'a str>) -> Option<Cow<'a, str>> {
        match self {
            Expr::Attribute(name) => attrs(name).map(Cow::Borrowed),
            Expr::Constant(value) => Some(Cow::Borrowed(value)),
            Expr::Append { source, suffix } => match (source.eval(attrs), suffix.eval(attrs)) {
                (None, None) => None,
                (Some(value), None) | (None, Some(value)) => Some(value),
                (Some(head), Some(tail)) if tail.is_empty() => Some(head),
                (Some(head), Some(tail)) => Some(Cow::Owned(head.into_owned() + &tail)),
            },
            Expr::Coalesce(sources) => sources.iter().find_map(|source| source.eval(attrs)),
            Expr::IgnoreFlowIfNullOrEmpty(source) => source.eval(attrs),
            Expr::Iif {
                condition,
                if_true,
                if_false,
            } => {
                if condition.holds(attrs) {
                    if_true.eval(attrs)
                } else {
                    if_false.eval(attrs)
                }
            }
            Expr::IsNull(source) => boolean(source.eval(attrs).is_none()),
            Expr::IsNullOrEmpty(source) => boolean(source.eval(attrs).is_none_or(|value| value.is_empty())),
            Expr::IsPresent(source) => boolean(source.eval(attrs).is_some_and(|value| !value.is_empty())),
            Expr::Join { separator, sources } => Some(join(separator, sources, attrs)),
            Expr::Left { source, num_chars } => {
                let count = integer(num_chars.eval(attrs))?;
                let source = source.eval(attrs).unwrap_or_default();
                if count < 0 {
                    return Some(source);
                }
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                Some(narrow(source, |s| char_slice(s, 0, count)))
            }
            Expr::Mid { source, start, length } => {
                let source = source.eval(attrs)?;
                let start = integer(start.eval(attrs))?;
                let length = integer(length.eval(attrs))?;
                if start < 1 || length < 0 {
                    return None;
                }
                let skip = usize::try_from(start - 1).unwrap_or(usize::MAX);
                let take = usize::try_from(length).unwrap_or(usize::MAX);
                Some(narrow(source, |s| char_slice(s, skip, take)))
            }
            Expr::NormalizeDiacritics(source) => source.eval(attrs).map(normalize_diacritics),
            Expr::Not(source) => boolean(!is_true(source.eval(attrs).as_deref())),
            Expr::Replace {
                source,
                old_value,
                replacement_value,
            } => {
                let source = source.eval(attrs)?;
                let old_value = old_value.eval(attrs).unwrap_or_default();
                if old_value.is_empty() || !source.contains(&*old_value) {
                    return Some(source);
                }
                let replacement = replacement_value.eval(attrs).unwrap_or_default();
                Some(Cow::Owned(source.replace(&*old_value, &replacement)))
            }
            Expr::StripSpaces(source) => source.eval(attrs).map(|value| {
                if value.contains(' ') {
                    Cow::Owned(value.replace(' ', ""))
                } else {
                    value
                }
            }),
            Expr::Switch { source, default, cases } => {
                let source = source.eval(attrs);
                let source = source.as_deref().unwrap_or("");
                for (key, value) in cases {
                    if key.eval(attrs).as_deref().unwrap_or("") == source {
                        return value.eval(attrs);
                    }
                }
                default.as_ref().and_then(|default| default.eval(attrs))
            }
            Expr::ToLower(source) => source.eval(attrs).map(|value| map_chars(value, simple_lowercase)),
            Expr::ToUpper(source) => source.eval(attrs).map(|value| map_chars(value, simple_uppercase)),
            Expr::Word {
                source,
                word_number,
                delimiters,
            } => {
                let number = integer(word_number.eval(attrs))?;
                let Some(source) = source.eval(attrs) else {
                    return Some(Cow::Borrowed(""));
                };
                if number < 1 {
                    return Some(Cow::Borrowed(""));
                }
                let index = usize::try_from(number - 1).unwrap_or(usize::MAX);
                let delimiters = delimiters.eval(attrs).unwrap_or_default();
                Some(narrow(source, |s| {
                    s.split(|c| delimiters.contains(c))
                        .filter(|word| !word.is_empty())
                        .nth(index)
                        .unwrap_or("")
                }))
            }
        }
    }

    /// Every attribute name the expression reads (for a directory query's `$select`).
    pub fn attributes(&self) -> BTreeSet<&str> {
        let mut names = BTreeSet::new();
        self.collect_attributes(&mut names);
        names
    }

    fn collect_attributes<'a>(&'a self, names: &mut BTreeSet<&'a str>) {
        match self {
            Expr::Attribute(name) => {
                names.insert(name);
            }
            Expr::Constant(_) => {}
            Expr::Append { source, suffix } => {
                source.collect_attributes(names);
                suffix.collect_attributes(names);
            }
            Expr::Coalesce(sources) => sources.iter().for_each(|source| source.collect_attributes(names)),
            Expr::IgnoreFlowIfNullOrEmpty(source)
            | Expr::IsNull(source)
            | Expr::IsNullOrEmpty(source)
            | Expr::IsPresent(source)
            | Expr::NormalizeDiacritics(source)
            | Expr::Not(source)
            | Expr::StripSpaces(source)
            | Expr::ToLower(source)
            | Expr::ToUpper(source) => source.collect_attributes(names),
            Expr::Iif {
                condition,
                if_true,
                if_false,
            } => {
                match condition.as_ref() {
                    Condition::Value(value) => value.collect_attributes(names),
                    Condition::Compare { left, right, .. } => {
                        left.collect_attributes(names);
                        right.collect_attributes(names);
                    }
                }
                if_true.collect_attributes(names);
                if_false.collect_attributes(names);
            }
            Expr::Join { separator, sources } => {
                separator.collect_attributes(names);
                sources.iter().for_each(|source| source.collect_attributes(names));
            }
            Expr::Left { source, num_chars: a }
            | Expr::Replace {
                source, old_value: a, ..
            } => {
                source.collect_attributes(names);
                a.collect_attributes(names);
                if let Expr::Replace { replacement_value, .. } = self {
                    replacement_value.collect_attributes(names);
                }
            }
            Expr::Mid {
                source,
                start: a,
                length: b,
            }
            | Expr::Word {
                source,
                word_number: a,
                delimiters: b,
            } => {
                source.collect_attributes(names);
                a.collect_attributes(names);
                b.collect_attributes(names);
            }
            Expr::Switch { source, default, cases } => {
                source.collect_attributes(names);
                if let Some(default) = default {
                    default.collect_attributes(names);
                }
                for (key, value) in cases {
                    key.collect_attributes(names);
                    value.collect_attributes(names);
                }
            }
        }
    }
}

impl Condition {
    fn holds<'a>(&'a self, attrs: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Condition::Value(value) => is_true(value.eval(attrs).as_deref()),
            Condition::Compare { left, op, right } => {
                let (left, right) = (left.eval(attrs), right.eval(attrs));
                let (left, right) = (left.as_deref().unwrap_or(""), right.as_deref().unwrap_or(""));
                let ordering = match (parse_integer(left), parse_integer(right)) {
                    (Some(left), Some(right)) => left.cmp(&right),
                    _ => left.cmp(right),
                };
                match op {
                    CompareOp::Eq => ordering.is_eq(),
                    CompareOp::Ne => ordering.is_ne(),
                    CompareOp::Lt => ordering.is_lt(),
                    CompareOp::Le => ordering.is_le(),
                    CompareOp::Gt => ordering.is_gt(),
                    CompareOp::Ge => ordering.is_ge(),
                }
            }
        }
    }
}

/// Writes `value` as a string constant that parses back to `value`.
pub fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

fn boolean(value: bool) -> Option<Cow<'static, str>> {
    Some(Cow::Borrowed(if value { "True" } else { "False" }))
}

fn is_true(value: Option<&str>) -> bool {
    value.is_some_and(|value| value.eq_ignore_ascii_case("true"))
}

fn parse_integer(value: &str) -> Option<i64> {
    value.trim().parse().ok()
}

fn integer(value: Option<Cow<'_, str>>) -> Option<i64> {
    parse_integer(&value?)
}

/// Keeps a part of `value`, still borrowed when `value` was.
fn narrow<'a>(value: Cow<'a, str>, part: impl for<'s> FnOnce(&'s str) -> &'s str) -> Cow<'a, str> {
    match value {
        Cow::Borrowed(value) => Cow::Borrowed(part(value)),
        Cow::Owned(value) => Cow::Owned(part(&value).to_owned()),
    }
}

/// The `take` characters after the first `skip`, as far as the string goes.
fn char_slice(value: &str, skip: usize, take: usize) -> &str {
    let begin = value.char_indices().nth(skip).map_or(value.len(), |(index, _)| index);
    let rest = &value[begin..];
    let end = rest.char_indices().nth(take).map_or(rest.len(), |(index, _)| index);
    &rest[..end]
}

fn join<'a>(separator: &'a Expr, sources: &'a [Expr], attrs: &dyn Fn(&str) -> Option<&'a str>) -> Cow<'a, str> {
    let mut parts = sources
        .iter()
        .filter_map(|source| source.eval(attrs))
        .filter(|part| !part.is_empty());
    let Some(first) = parts.next() else {
        return Cow::Borrowed("");
    };
    let Some(second) = parts.next() else {
        return first;
    };
    let separator = separator.eval(attrs).unwrap_or_default();
    let mut joined = first.into_owned();
    for part in std::iter::once(second).chain(parts) {
        joined.push_str(&separator);
        joined.push_str(&part);
    }
    Cow::Owned(joined)
}

fn map_chars(value: Cow<'_, str>, map: fn(char) -> char) -> Cow<'_, str> {
    if value.chars().all(|c| map(c) == c) {
        value
    } else {
        Cow::Owned(value.chars().map(map).collect())
    }
}

fn simple_lowercase(c: char) -> char {
    // Only U+0130 lowercases to two characters; its simple mapping is the first, 'i'.
    c.to_lowercase().next().unwrap_or(c)
}

fn simple_uppercase(c: char) -> char {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(single), None) => single,
        _ => c,
    }
}

/// Letters without a canonical decomposition that Entra's table still normalizes.
fn letter_without_decomposition(c: char) -> Option<&'static str> {
    Some(match c {
        'æ' => "ae",
        'Æ' => "AE",
        'ø' | 'œ' => "oe",
        'Ø' | 'Œ' => "OE",
        'ß' => "ss",
        'ẞ' => "SS",
        'ł' => "l",
        'Ł' => "L",
        'ı' => "i",
        'đ' => "d",
        'Đ' => "D",
        _ => return None,
    })
}

fn normalize_diacritics(value: Cow<'_, str>) -> Cow<'_, str> {
    if value.is_ascii() {
        return value;
    }
    let mut normalized = String::with_capacity(value.len());
    let mut after_latin_letter = false;
    for c in value.chars() {
        if is_combining_mark(c) {
            if !after_latin_letter {
                normalized.push(c);
            }
            continue;
        }
        let mut base = None;
        decompose_canonical(c, |part| {
            base.get_or_insert(part);
        });
        let base = base.unwrap_or(c);
        after_latin_letter = true;
        if base.is_ascii_alphabetic() {
            normalized.push(base);
        } else if let Some(letters) = letter_without_decomposition(base) {
            normalized.push_str(letters);
        } else {
            normalized.push(c);
            after_latin_letter = false;
        }
    }
    Cow::Owned(normalized)
}

fn describe(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("character U+{:04X}", u32::from(c))
    } else {
        format!("'{c}'")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Append,
    Coalesce,
    IgnoreFlowIfNullOrEmpty,
    Iif,
    IsNull,
    IsNullOrEmpty,
    IsPresent,
    Join,
    Left,
    Mid,
    NormalizeDiacritics,
    Not,
    Replace,
    StripSpaces,
    Switch,
    ToLower,
    ToUpper,
    Word,
}

/// Each supported function with its signature, as Microsoft's reference writes it.
const FUNCTIONS: &[(&str, Function, &str)] = &[
    ("Append", Function::Append, "Append(source, suffix)"),
    ("Coalesce", Function::Coalesce, "Coalesce(source1, source2, ...)"),
    (
        "IgnoreFlowIfNullOrEmpty",
        Function::IgnoreFlowIfNullOrEmpty,
        "IgnoreFlowIfNullOrEmpty(source)",
    ),
    ("IIF", Function::Iif, "IIF(condition, valueIfTrue, valueIfFalse)"),
    ("IsNull", Function::IsNull, "IsNull(source)"),
    ("IsNullOrEmpty", Function::IsNullOrEmpty, "IsNullOrEmpty(source)"),
    ("IsPresent", Function::IsPresent, "IsPresent(source)"),
    ("Join", Function::Join, "Join(separator, source1, source2, ...)"),
    ("Left", Function::Left, "Left(source, numChars)"),
    ("Mid", Function::Mid, "Mid(source, start, length)"),
    (
        "NormalizeDiacritics",
        Function::NormalizeDiacritics,
        "NormalizeDiacritics(source)",
    ),
    ("Not", Function::Not, "Not(source)"),
    (
        "Replace",
        Function::Replace,
        "Replace(source, oldValue, regexPattern, regexGroupName, replacementValue, replacementAttributeName, template)",
    ),
    ("StripSpaces", Function::StripSpaces, "StripSpaces(source)"),
    (
        "Switch",
        Function::Switch,
        "Switch(source, defaultValue, key1, value1, key2, value2, ...)",
    ),
    ("ToLower", Function::ToLower, "ToLower(source, culture)"),
    ("ToUpper", Function::ToUpper, "ToUpper(source, culture)"),
    ("Word", Function::Word, "Word(string, wordNumber, delimiters)"),
];

/// Entra functions this module does not implement, named so a pasted expression gets a clear
/// answer rather than "unknown function".
const UNSUPPORTED_ENTRA_FUNCTIONS: &[&str] = &[
    "AppRoleAssignmentsComplex",
    "BitAnd",
    "CBool",
    "CDate",
    "ConvertToBase64",
    "ConvertToUTF8Hex",
    "Count",
    "CStr",
    "DateAdd",
    "DateDiff",
    "DateFromNum",
    "FormatDateTime",
    "Guid",
    "InStr",
    "IsString",
    "Item",
    "Now",
    "NumFromDate",
    "PCase",
    "RandomString",
    "Redact",
    "RemoveDuplicates",
    "SelectUniqueValue",
    "SingleAppRoleAssignment",
    "Split",
];

/// One argument as written: absent when empty. `pos` is a byte offset.
struct Argument {
    value: Option<Parsed>,
    pos: usize,
}

enum Parsed {
    Expr(Expr),
    Compare(Expr, CompareOp, Expr),
}

struct Parser<'s> {
    src: &'s str,
    /// Byte offset; converted to a character offset only when an error is reported.
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error_at(&self, byte: usize, kind: ParseErrorKind, message: impl Into<String>) -> ParseError {
        ParseError {
            position: self.src[..byte].chars().count(),
            kind,
            message: message.into(),
        }
    }

    fn misplaced_comparison(&self) -> ParseError {
        self.error_at(
            self.pos,
            ParseErrorKind::MisplacedComparison,
            "a comparison (=, <>, <, <=, >, >=) is only allowed as the condition of IIF",
        )
    }

    fn expression(&mut self) -> Result<Expr, ParseError> {
        self.skip_whitespace();
        let start = self.pos;
        match self.peek() {
            None => Err(self.error_at(start, ParseErrorKind::UnexpectedEnd, "expected an expression")),
            Some('[') => self.attribute(),
            Some('"') => self.string().map(Expr::Constant),
            Some(c) if c == '-' || c.is_ascii_digit() => self.integer(),
            Some(c) if c.is_ascii_alphabetic() => self.call(),
            Some(c) => Err(self.error_at(
                start,
                ParseErrorKind::UnexpectedCharacter,
                format!(
                    "unexpected {}: expected an [attribute], a \"string constant\", an integer or a function call",
                    describe(c)
                ),
            )),
        }
    }

    fn attribute(&mut self) -> Result<Expr, ParseError> {
        let open = self.pos;
        self.bump();
        let name_start = self.pos;
        loop {
            let here = self.pos;
            match self.bump() {
                None => {
                    return Err(self.error_at(open, ParseErrorKind::UnclosedAttribute, "'[' without a closing ']'"));
                }
                Some(']') => break,
                Some(c) if c.is_whitespace() || c.is_control() || c == '[' || c == '"' => {
                    return Err(self.error_at(
                        here,
                        ParseErrorKind::InvalidAttributeName,
                        format!("{} is not allowed in an attribute name", describe(c)),
                    ));
                }
                Some(_) => {}
            }
        }
        let name = &self.src[name_start..self.pos - 1];
        if name.is_empty() {
            return Err(self.error_at(open, ParseErrorKind::InvalidAttributeName, "empty attribute name '[]'"));
        }
        Ok(Expr::Attribute(name.to_owned()))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let open = self.pos;
        self.bump();
        let mut value = String::new();
        loop {
            let here = self.pos;
            match self.bump() {
                None => {
                    return Err(self.error_at(
                        open,
                        ParseErrorKind::UnclosedString,
                        "string constant without a closing '\"'",
                    ));
                }
                Some('"') => return Ok(value),
                Some('\\') => match self.bump() {
                    Some(c @ ('"' | '\\')) => value.push(c),
                    None => {
                        return Err(self.error_at(
                            open,
                            ParseErrorKind::UnclosedString,
                            "string constant without a closing '\"'",
                        ));
                    }
                    Some(c) => {
                        return Err(self.error_at(
                            here,
                            ParseErrorKind::InvalidEscape,
                            format!(
                                "invalid escape '\\{c}' in a string constant: only \\\" and \\\\ are escapes (write a backslash as \\\\)"
                            ),
                        ));
                    }
                },
                Some(c) => value.push(c),
            }
        }
    }

    fn integer(&mut self) -> Result<Expr, ParseError> {
        let start = self.pos;
        if self.peek() == Some('-') {
            self.bump();
        }
        let digits = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
        if self.pos == digits {
            return Err(self.error_at(start, ParseErrorKind::InvalidInteger, "'-' must be followed by digits"));
        }
        match self.src[start..self.pos].parse::<i64>() {
            Ok(value) => Ok(Expr::Constant(value.to_string())),
            Err(_) => Err(self.error_at(
                start,
                ParseErrorKind::InvalidInteger,
                "integer out of range (64-bit signed integers only)",
            )),
        }
    }

    fn call(&mut self) -> Result<Expr, ParseError> {
        let name_start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.bump();
        }
        let name = &self.src[name_start..self.pos];
        let known = FUNCTIONS.iter().find(|(known, ..)| *known == name);
        self.skip_whitespace();
        let opens_call = self.peek() == Some('(');
        let Some(&(_, function, signature)) = known else {
            return Err(self.unknown_function(name_start, name, opens_call));
        };
        if !opens_call {
            return Err(self.error_at(
                self.pos,
                ParseErrorKind::UnexpectedCharacter,
                format!("expected '(' after the function name {name}"),
            ));
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_at(
                name_start,
                ParseErrorKind::TooDeep,
                format!("function calls are nested more than {MAX_DEPTH} deep"),
            ));
        }
        let open = self.pos;
        self.bump();
        let arguments = self.arguments(function, open)?;
        self.depth -= 1;
        self.build(function, signature, name_start, arguments)
    }

    fn unknown_function(&self, at: usize, name: &str, opens_call: bool) -> ParseError {
        let message = if let Some((known, ..)) = FUNCTIONS.iter().find(|(known, ..)| known.eq_ignore_ascii_case(name)) {
            format!("unknown function {name}: names are case-sensitive, did you mean {known}?")
        } else if UNSUPPORTED_ENTRA_FUNCTIONS.contains(&name) {
            format!(
                "the Entra function {name} is not supported; supported: {}",
                supported_functions()
            )
        } else if opens_call {
            format!("unknown function {name}; supported: {}", supported_functions())
        } else {
            format!("unexpected name {name}: write an attribute in square brackets, [{name}]")
        };
        self.error_at(at, ParseErrorKind::UnknownFunction, message)
    }

    fn arguments(&mut self, function: Function, open: usize) -> Result<Vec<Argument>, ParseError> {
        let mut arguments = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(')') {
            self.bump();
            return Ok(arguments);
        }
        loop {
            self.skip_whitespace();
            let pos = self.pos;
            let is_condition = function == Function::Iif && arguments.is_empty();
            let value = match self.peek() {
                Some(',' | ')') => None,
                None => return Err(self.missing_close(open)),
                _ => Some(self.argument(is_condition)?),
            };
            arguments.push(Argument { value, pos });
            self.skip_whitespace();
            let here = self.pos;
            match self.bump() {
                Some(',') => {}
                Some(')') => return Ok(arguments),
                Some('=' | '<' | '>') if is_condition => {
                    return Err(self.error_at(
                        here,
                        ParseErrorKind::MisplacedComparison,
                        "the condition of IIF holds one comparison; nest IIF to combine conditions",
                    ));
                }
                Some('=' | '<' | '>') => {
                    self.pos = here;
                    return Err(self.misplaced_comparison());
                }
                None => return Err(self.missing_close(open)),
                Some(c) => {
                    return Err(self.error_at(
                        here,
                        ParseErrorKind::UnexpectedCharacter,
                        format!("unexpected {} in the arguments: expected ',' or ')'", describe(c)),
                    ));
                }
            }
        }
    }

    fn missing_close(&self, open: usize) -> ParseError {
        self.error_at(
            self.src.len(),
            ParseErrorKind::UnexpectedEnd,
            format!(
                "missing ')' to close the '(' at character {}",
                self.src[..open].chars().count()
            ),
        )
    }

    fn argument(&mut self, is_condition: bool) -> Result<Parsed, ParseError> {
        let left = self.expression()?;
        if !is_condition {
            return Ok(Parsed::Expr(left));
        }
        self.skip_whitespace();
        let op = match self.peek() {
            Some('=') => CompareOp::Eq,
            Some('<') => match self.src[self.pos + 1..].chars().next() {
                Some('>') => CompareOp::Ne,
                Some('=') => CompareOp::Le,
                _ => CompareOp::Lt,
            },
            Some('>') => match self.src[self.pos + 1..].chars().next() {
                Some('=') => CompareOp::Ge,
                _ => CompareOp::Gt,
            },
            _ => return Ok(Parsed::Expr(left)),
        };
        self.pos += match op {
            CompareOp::Eq | CompareOp::Lt | CompareOp::Gt => 1,
            CompareOp::Ne | CompareOp::Le | CompareOp::Ge => 2,
        };
        let right = self.expression()?;
        Ok(Parsed::Compare(left, op, right))
    }

    fn build(
        &self,
        function: Function,
        signature: &str,
        at: usize,
        arguments: Vec<Argument>,
    ) -> Result<Expr, ParseError> {
        let count = arguments.len();
        let arity_error = |expected: &str| {
            self.error_at(
                at,
                ParseErrorKind::WrongArgumentCount,
                format!("{signature} takes {expected}, found {count}"),
            )
        };
        let (min, max) = match function {
            Function::Append | Function::Left => (2, Some(2)),
            Function::Coalesce => (1, None),
            Function::Iif | Function::Mid | Function::Word => (3, Some(3)),
            Function::Join => (2, None),
            Function::Replace => (7, Some(7)),
            Function::Switch => (4, None),
            Function::ToLower | Function::ToUpper => (1, Some(2)),
            Function::IgnoreFlowIfNullOrEmpty
            | Function::IsNull
            | Function::IsNullOrEmpty
            | Function::IsPresent
            | Function::NormalizeDiacritics
            | Function::Not
            | Function::StripSpaces => (1, Some(1)),
        };
        match (min, max) {
            (min, Some(max)) if min == max && count != min => {
                let hint = if function == Function::Replace {
                    "; write the unused ones as empty arguments: Replace([mail], \"@old\", , , \"@new\", , )"
                } else {
                    ""
                };
                return Err(arity_error(&format!(
                    "{min} argument{}{hint}",
                    if min == 1 { "" } else { "s" }
                )));
            }
            (min, Some(max)) if count < min || count > max => {
                return Err(arity_error(&format!("{min} to {max} arguments")));
            }
            (min, None) if count < min => {
                let expected = if function == Function::Switch {
                    "a source, a defaultValue and at least one key/value pair".to_owned()
                } else {
                    format!("at least {min} arguments")
                };
                return Err(arity_error(&expected));
            }
            _ => {}
        }
        if function == Function::Switch && !count.is_multiple_of(2) {
            return Err(self.error_at(
                arguments[count - 1].pos,
                ParseErrorKind::WrongArgumentCount,
                format!("{signature}: this key has no value (keys and values come in pairs)"),
            ));
        }
        if function == Function::Replace {
            return self.replace(arguments);
        }

        for (index, argument) in arguments.iter().enumerate() {
            let optional = matches!(
                (function, index),
                (Function::Switch, 1) | (Function::ToLower | Function::ToUpper, 1)
            );
            let numeric = matches!(
                (function, index),
                (Function::Left, 1) | (Function::Mid, 1 | 2) | (Function::Word, 1)
            );
            match &argument.value {
                None if !optional => {
                    return Err(self.error_at(
                        argument.pos,
                        ParseErrorKind::InvalidArgument,
                        format!("argument {} of {signature} is empty", index + 1),
                    ));
                }
                Some(Parsed::Expr(Expr::Constant(constant))) if numeric && parse_integer(constant).is_none() => {
                    return Err(self.error_at(
                        argument.pos,
                        ParseErrorKind::InvalidArgument,
                        format!("argument {} of {signature} must be an integer", index + 1),
                    ));
                }
                _ => {}
            }
        }

        let mut values = arguments.into_iter().map(|argument| argument.value);
        let mut next = || Box::new(present(values.next()));
        Ok(match function {
            Function::Append => Expr::Append {
                source: next(),
                suffix: next(),
            },
            Function::Coalesce => Expr::Coalesce(values.map(Some).map(present).collect()),
            Function::IgnoreFlowIfNullOrEmpty => Expr::IgnoreFlowIfNullOrEmpty(next()),
            Function::Iif => {
                let condition = match values.next().flatten() {
                    Some(Parsed::Compare(left, op, right)) => Condition::Compare { left, op, right },
                    first => Condition::Value(present(Some(first))),
                };
                let mut next = || Box::new(present(values.next()));
                Expr::Iif {
                    condition: Box::new(condition),
                    if_true: next(),
                    if_false: next(),
                }
            }
            Function::IsNull => Expr::IsNull(next()),
            Function::IsNullOrEmpty => Expr::IsNullOrEmpty(next()),
            Function::IsPresent => Expr::IsPresent(next()),
            Function::Join => Expr::Join {
                separator: next(),
                sources: values.map(Some).map(present).collect(),
            },
            Function::Left => Expr::Left {
                source: next(),
                num_chars: next(),
            },
            Function::Mid => Expr::Mid {
                source: next(),
                start: next(),
                length: next(),
            },
            Function::NormalizeDiacritics => Expr::NormalizeDiacritics(next()),
            Function::Not => Expr::Not(next()),
            Function::StripSpaces => Expr::StripSpaces(next()),
            Function::Switch => {
                let source = next();
                let default = match values.next().flatten() {
                    None => None,
                    value => Some(Box::new(present(Some(value)))),
                };
                let mut cases = Vec::with_capacity(count / 2 - 1);
                while let Some(key) = values.next() {
                    cases.push((present(Some(key)), present(values.next())));
                }
                Expr::Switch { source, default, cases }
            }
            Function::ToLower => Expr::ToLower(next()),
            Function::ToUpper => Expr::ToUpper(next()),
            Function::Word => Expr::Word {
                source: next(),
                word_number: next(),
                delimiters: next(),
            },
            Function::Replace => unreachable!("Replace is built by Parser::replace"),
        })
    }

    /// Only `Replace(source, oldValue, , , replacementValue, , )` is supported: the regex and
    /// template forms depend on .NET regular expressions and are refused rather than approximated.
    fn replace(&self, arguments: Vec<Argument>) -> Result<Expr, ParseError> {
        const NAMES: [&str; 7] = [
            "source",
            "oldValue",
            "regexPattern",
            "regexGroupName",
            "replacementValue",
            "replacementAttributeName",
            "template",
        ];
        for (index, argument) in arguments.iter().enumerate() {
            let required = matches!(index, 0 | 1 | 4);
            if required == argument.value.is_some() {
                continue;
            }
            let problem = if required { "must be given" } else { "must be empty" };
            return Err(self.error_at(
                argument.pos,
                ParseErrorKind::UnsupportedReplaceForm,
                format!(
                    "only the plain-string form Replace(source, oldValue, , , replacementValue, , ) is supported: argument {} ({}) {problem}",
                    index + 1,
                    NAMES[index]
                ),
            ));
        }
        let mut values = arguments.into_iter().map(|argument| argument.value);
        let source = Box::new(present(values.next()));
        let old_value = Box::new(present(values.next()));
        let replacement_value = Box::new(present(values.nth(2)));
        Ok(Expr::Replace {
            source,
            old_value,
            replacement_value,
        })
    }
}

/// An argument that validation has shown to be present and not a comparison.
fn present(argument: Option<Option<Parsed>>) -> Expr {
    match argument.flatten() {
        Some(Parsed::Expr(expr)) => expr,
        _ => unreachable!("argument count and presence are validated before an expression is built"),
    }
}

fn supported_functions() -> String {
    FUNCTIONS.iter().map(|(name, ..)| *name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn eval(expression: &str, attrs: &[(&str, &str)]) -> Option<String> {
        let expr = Expr::parse(expression).unwrap_or_else(|error| panic!("{expression}: {error}"));
        let attrs: HashMap<&str, &str> = attrs.iter().copied().collect();
        expr.eval(&|name| attrs.get(name).copied()).map(Cow::into_owned)
    }

    fn some(value: &str) -> Option<String> {
        Some(value.to_owned())
    }

    fn error(expression: &str) -> ParseError {
        match Expr::parse(expression) {
            Ok(expr) => panic!("{expression} parsed as {expr:?}"),
            Err(error) => error,
        }
    }

    fn assert_error(expression: &str, position: usize, kind: ParseErrorKind, needle: &str) {
        let error = error(expression);
        assert_eq!((error.position, error.kind), (position, kind), "{expression}: {error}");
        assert!(
            error.message.contains(needle),
            "{expression}: {error:?} lacks {needle:?}"
        );
    }

    /// (expression, attributes, expected output) taken from Microsoft's reference.
    type Example = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
    );

    fn check(examples: &[Example]) {
        for (expression, attrs, expected) in examples {
            assert_eq!(
                eval(expression, attrs).as_deref(),
                *expected,
                "{expression} with {attrs:?}"
            );
        }
    }

    // Syntax overview: escapes in string constants.
    #[test]
    fn string_constants_unescape_quotes_and_backslashes() {
        check(&[
            (
                r#""Company name: \"Contoso\"""#,
                &[],
                Some(r#"Company name: "Contoso""#),
            ),
            (r#""C:\\temp""#, &[], Some(r"C:\temp")),
            (r#""United States""#, &[], Some("United States")),
        ]);
    }

    #[test]
    fn append_matches_the_reference() {
        check(&[(
            r#"Append([userPrincipalName], ".test")"#,
            &[("userPrincipalName", "John.Doe@contoso.com")],
            Some("John.Doe@contoso.com.test"),
        )]);
    }

    #[test]
    fn coalesce_matches_the_reference() {
        check(&[
            (
                "Coalesce([mail],[userPrincipalName])",
                &[("userPrincipalName", "John.Doe@contoso.com")],
                Some("John.Doe@contoso.com"),
            ),
            (
                "Coalesce([mail],[userPrincipalName])",
                &[
                    ("mail", "jd@contoso.com"),
                    ("userPrincipalName", "John.Doe@contoso.com"),
                ],
                Some("jd@contoso.com"),
            ),
            // The optional defaultValue, used when every source is NULL.
            (r#"Coalesce([mail], [otherMail], "none")"#, &[], Some("none")),
            ("Coalesce([mail], [otherMail])", &[], None),
        ]);
    }

    #[test]
    fn iif_matches_the_reference() {
        let and = r#"IIF([country]="USA",IIF([state]="CA","True","False"),"False")"#;
        let or = r#"IIF([country]="USA","True",IIF([state]="CA","True","False"))"#;
        check(&[
            (
                r#"IIF([country]="USA",[country],[department])"#,
                &[("country", "USA"), ("department", "Sales")],
                Some("USA"),
            ),
            (
                r#"IIF([country]="USA",[country],[department])"#,
                &[("country", "NL"), ("department", "Sales")],
                Some("Sales"),
            ),
            (and, &[("country", "USA"), ("state", "CA")], Some("True")),
            (and, &[("country", "USA"), ("state", "NY")], Some("False")),
            (and, &[("country", "NL"), ("state", "CA")], Some("False")),
            (or, &[("country", "NL"), ("state", "CA")], Some("True")),
            (or, &[("country", "USA"), ("state", "NY")], Some("True")),
            (or, &[("country", "NL"), ("state", "NY")], Some("False")),
            // The "Resolution" example given under Switch.
            (
                r#"IIF([companyName] = "Company A", "A", IIF([companyName] = "Company B", "B", "External"))"#,
                &[("companyName", "Company B")],
                Some("B"),
            ),
            (
                r#"IIF([companyName] = "Company A", "A", IIF([companyName] = "Company B", "B", "External"))"#,
                &[],
                Some("External"),
            ),
        ]);
    }

    #[test]
    fn iif_compares_with_every_operator() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("=", "a", "a", true),
            ("=", "a", "A", false),
            ("<>", "a", "b", true),
            ("<>", "a", "a", false),
            ("<", "a", "b", true),
            ("<=", "b", "b", true),
            (">", "b", "a", true),
            (">=", "a", "b", false),
        ];
        for (op, left, right, holds) in cases {
            let expression = format!(r#"IIF([l] {op} [r], "yes", "no")"#);
            let expected = if *holds { "yes" } else { "no" };
            assert_eq!(
                eval(&expression, &[("l", left), ("r", right)]).as_deref(),
                Some(expected),
                "{expression}"
            );
        }
    }

    #[test]
    fn is_null_or_empty_matches_the_reference() {
        check(&[
            ("IsNullOrEmpty([displayName])", &[], Some("True")),
            ("IsNullOrEmpty([displayName])", &[("displayName", "")], Some("True")),
            (
                "IsNullOrEmpty([displayName])",
                &[("displayName", "John")],
                Some("False"),
            ),
        ]);
    }

    #[test]
    fn is_null_matches_the_reference() {
        check(&[
            ("IsNull([displayName])", &[], Some("True")),
            ("IsNull([displayName])", &[("displayName", "")], Some("False")),
        ]);
    }

    #[test]
    fn is_present_matches_the_reference() {
        check(&[
            ("IsPresent([displayName])", &[("displayName", "John")], Some("True")),
            ("IsPresent([displayName])", &[("displayName", "")], Some("False")),
            ("IsPresent([displayName])", &[], Some("False")),
        ]);
        // The reference's IsPresent example parses; evaluated by Switch's documented meaning, the
        // source "True" picks the value of the key that is also "True".
        let example = "Switch(IsPresent([directManager]),[directManager], IsPresent([skiplevelManager]),[skiplevelManager], IsPresent([director]),[director])";
        check(&[(
            example,
            &[("directManager", "alice"), ("skiplevelManager", "bob")],
            Some("bob"),
        )]);
    }

    #[test]
    fn join_matches_the_reference() {
        check(&[
            (
                r#"Join(", ", "", [surname], [givenName])"#,
                &[("givenName", "John"), ("surname", "Doe")],
                Some("Doe, John"),
            ),
            (
                r#"Join("@", NormalizeDiacritics(StripSpaces(Join(".",  [PreferredFirstName], [PreferredLastName]))), "contoso.com")"#,
                &[("PreferredFirstName", "John"), ("PreferredLastName", "Smith")],
                Some("John.Smith@contoso.com"),
            ),
            // An integer literal, as in the reference's Join("", 1000, ...).
            (
                r#"Join("", 1000, [employeeId])"#,
                &[("employeeId", "42")],
                Some("100042"),
            ),
        ]);
    }

    #[test]
    fn left_matches_the_reference() {
        check(&[
            (r#"Left("John Doe", 3)"#, &[], Some("Joh")),
            (r#"Left("John Doe", 0)"#, &[], Some("")),
            (r#"Left("John Doe", -1)"#, &[], Some("John Doe")),
            (r#"Left("John Doe", 20)"#, &[], Some("John Doe")),
            ("Left([missing], 3)", &[], Some("")),
        ]);
    }

    #[test]
    fn mid_matches_the_reference() {
        let alias = "Append(Mid([givenName], 1, 3), Mid([surname], 1, 5))";
        let unique = r#"Join("@", NormalizeDiacritics(StripSpaces(Join(".",  Mid([PreferredFirstName], 1, 2), [PreferredLastName]))), "contoso.com")"#;
        check(&[
            (alias, &[("givenName", "John"), ("surname", "Doe")], Some("JohDoe")),
            (
                unique,
                &[("PreferredFirstName", "John"), ("PreferredLastName", "Smith")],
                Some("Jo.Smith@contoso.com"),
            ),
            (r#"Mid("abcdef", 3, 2)"#, &[], Some("cd")),
        ]);
    }

    #[test]
    fn normalize_diacritics_matches_the_reference() {
        check(&[("NormalizeDiacritics([givenName])", &[("givenName", "Zoë")], Some("Zoe"))]);
        // The reference's table: every character of a row normalizes to the row's letters.
        let table: &[(&str, &str)] = &[
            ("ä, à, â, ã, å, á, ą, ă, ā, ā́, ā̀, ā̂, ā̃, ǟ, ā̈, ǡ, a̱, å̄", "a"),
            ("Ä, À, Â, Ã, Å, Á, Ą, Ă, Ā, Ā́, Ā̀, Ā̂, Ā̃, Ǟ, Ā̈, Ǡ, A̱, Å̄", "A"),
            ("æ, ǣ", "ae"),
            ("Æ, Ǣ", "AE"),
            ("ç, č, ć, c̄, c̱", "c"),
            ("Ç, Č, Ć, C̄, C̱", "C"),
            ("ď, d̄, ḏ", "d"),
            ("Ď, D̄, Ḏ", "D"),
            ("ë, è, é, ê, ę, ě, ė, ē, ḗ, ḕ, ē̂, ē̃, ê̄, e̱, ë̄, e̊̄", "e"),
            ("Ë, È, É, Ê, Ę, Ě, Ė, Ē, Ḗ, Ḕ, Ē̂, Ē̃, Ê̄, E̱, Ë̄, E̊̄", "E"),
            ("ğ, ḡ, g̱", "g"),
            ("Ğ, Ḡ, G̱", "G"),
            ("ï, î, ì, í, ı, ī, ī́, ī̀, ī̂, ī̃, i̱", "i"),
            ("Ï, Î, Ì, Í, İ, Ī, Ī́, Ī̀, Ī̂, Ī̃, I̱", "I"),
            ("ľ, ł, l̄, ḹ, ḻ", "l"),
            ("Ł, Ľ, L̄, Ḹ, Ḻ", "L"),
            ("ñ, ń, ň, n̄, ṉ", "n"),
            ("Ñ, Ń, Ň, N̄, Ṉ", "N"),
            ("ö, ò, ő, õ, ô, ó, ō, ṓ, ṑ, ō̂, ō̃, ȫ, ō̈, ǭ, ȭ, ȱ, o̱", "o"),
            ("Ö, Ò, Ő, Õ, Ô, Ó, Ō, Ṓ, Ṑ, Ō̂, Ō̃, Ȫ, Ō̈, Ǭ, Ȭ, Ȱ, O̱", "O"),
            ("ø, ø̄, œ̄", "oe"),
            ("Ø, Ø̄, Œ̄", "OE"),
            ("ř, r̄, ṟ, ṝ", "r"),
            ("Ř, R̄, Ṟ, Ṝ", "R"),
            ("ß", "ss"),
            ("š, ś, ș, ş, s̄, s̱", "s"),
            ("Š, Ś, Ș, Ş, S̄, S̱", "S"),
            ("ť, ț, t̄, ṯ", "t"),
            ("Ť, Ț, T̄, Ṯ", "T"),
            ("ü, ù, û, ú, ů, ű, ū, ū́, ū̀, ū̂, ū̃, u̇̄, ǖ, ṻ, ṳ̄, u̱", "u"),
            ("Ü, Ù, Û, Ú, Ů, Ű, Ū, Ū́, Ū̀, Ū̂, Ū̃, U̇̄, Ǖ, Ṻ, Ṳ̄, U̱", "U"),
            ("ÿ, ý, ȳ, ȳ́, ȳ̀, ȳ̃, y̱", "y"),
            ("Ÿ, Ý, Ȳ, Ȳ́, Ȳ̀, Ȳ̃, Y̱", "Y"),
            ("ź, ž, ż, z̄, ẕ", "z"),
            ("Ź, Ž, Ż, Z̄, Ẕ", "Z"),
        ];
        for (characters, expected) in table {
            for character in characters.split(", ") {
                assert_eq!(
                    eval("NormalizeDiacritics([v])", &[("v", character)]).as_deref(),
                    Some(*expected),
                    "{character:?} ({:?})",
                    character
                        .chars()
                        .map(|c| format!("U+{:04X}", u32::from(c)))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn not_matches_the_reference() {
        check(&[
            (r#"Not("True")"#, &[], Some("False")),
            (r#"Not("False")"#, &[], Some("True")),
            ("Not(IsPresent([mail]))", &[("mail", "a@b")], Some("False")),
        ]);
    }

    #[test]
    fn replace_matches_the_reference() {
        check(&[
            (
                r#"Replace([BusinessTitle],"Product Developer", , , "Software Engineer", , )"#,
                &[("BusinessTitle", "Product Developer")],
                Some("Software Engineer"),
            ),
            (
                r#"Replace([mail], "@contoso.com", , ,"", ,)"#,
                &[("mail", "john.doe@contoso.com")],
                Some("john.doe"),
            ),
            (
                r#"Replace([mail], "@old", , , "@new", , )"#,
                &[("mail", "a@old.com, b@old.com")],
                Some("a@new.com, b@new.com"),
            ),
            (
                r#"Replace([mail], "@OLD", , , "@new", , )"#,
                &[("mail", "a@old.com")],
                Some("a@old.com"),
            ),
        ]);
    }

    #[test]
    fn replace_in_its_regex_or_template_forms_is_refused() {
        // Template form (Example 2 of the reference): replacementValue is missing.
        assert_error(
            r#"Replace([UserID],"<username>", , , , , "<username>@contoso.com")"#,
            35,
            ParseErrorKind::UnsupportedReplaceForm,
            "argument 5 (replacementValue) must be given",
        );
        // Regex form (Example 3): oldValue is missing.
        assert_error(
            r#"Replace([telephoneNumber], , "\\+(?<isdCode>\\d* )(?<phoneNumber>\\d{10})", , "${phoneNumber}", , )"#,
            27,
            ParseErrorKind::UnsupportedReplaceForm,
            "argument 2 (oldValue) must be given",
        );
        assert_error(
            r#"Replace([mail], "a", "[a-z]", , "", , )"#,
            21,
            ParseErrorKind::UnsupportedReplaceForm,
            "argument 3 (regexPattern) must be empty",
        );
        assert_error(
            r#"Replace([mail], "a", "b")"#,
            0,
            ParseErrorKind::WrongArgumentCount,
            "takes 7 arguments",
        );
    }

    #[test]
    fn strip_spaces_matches_the_reference() {
        check(&[
            (
                "StripSpaces([name])",
                &[("name", " John  van Doe ")],
                Some("JohnvanDoe"),
            ),
            ("StripSpaces([name])", &[], None),
        ]);
    }

    #[test]
    fn switch_matches_the_reference() {
        let time_zone = r#"Switch([state], "Australia/Sydney", "NSW", "Australia/Sydney","QLD", "Australia/Brisbane", "SA", "Australia/Adelaide")"#;
        let prefix =
            r#"IgnoreFlowIfNullOrEmpty(Switch([prefix], "", "3443", "Dr.", "3444", "Prof.", "3445", "Prof. Dr."))"#;
        let lowered = r#"Switch(ToLower([statusFlag]), "0", "true", "1", "false", "0")"#;
        let empty_key = r#"Switch([statusFlag], "Default Value", "true", "1", "", "0")"#;
        let workaround = r#"Switch([country],[country],"","Other")"#;
        check(&[
            (time_zone, &[("state", "QLD")], Some("Australia/Brisbane")),
            (time_zone, &[("state", "VIC")], Some("Australia/Sydney")),
            (prefix, &[("prefix", "3444")], Some("Prof.")),
            (prefix, &[("prefix", "9999")], Some("")),
            (lowered, &[("statusFlag", "TRUE")], Some("1")),
            (lowered, &[("statusFlag", "False")], Some("0")),
            (empty_key, &[("statusFlag", "")], Some("0")),
            (empty_key, &[], Some("0")),
            (empty_key, &[("statusFlag", "maybe")], Some("Default Value")),
            (workaround, &[], Some("Other")),
            (workaround, &[("country", "NL")], Some("NL")),
            // The reference's DateDiff example leaves defaultValue empty.
            (
                r#"Switch([Active], , "1", "True", "0", "False")"#,
                &[("Active", "0")],
                Some("False"),
            ),
        ]);
    }

    #[test]
    fn to_lower_matches_the_reference() {
        check(&[(
            r#"ToLower(Join("@", NormalizeDiacritics(StripSpaces(Join(".",  [PreferredFirstName], [PreferredLastName]))), "contoso.com"))"#,
            &[("PreferredFirstName", "John"), ("PreferredLastName", "Smith")],
            Some("john.smith@contoso.com"),
        )]);
    }

    #[test]
    fn to_upper_converts_to_upper_case() {
        check(&[
            ("ToUpper([c])", &[("c", "nl-Zoë")], Some("NL-ZOË")),
            (r#"ToUpper([c], "en-US")"#, &[("c", "abc")], Some("ABC")),
        ]);
    }

    #[test]
    fn word_matches_the_reference() {
        check(&[
            (r#"Word("The quick brown fox",3," ")"#, &[], Some("brown")),
            (r#"Word("This,string!has&many separators",3,",!&#")"#, &[], Some("has")),
            (r#"Word("The quick brown fox",0," ")"#, &[], Some("")),
            (r#"Word("The quick brown fox",5," ")"#, &[], Some("")),
            (r#"Word([missing],1," ")"#, &[], Some("")),
        ]);
    }

    // Edge cases listed at the top of the module, one test each.

    #[test]
    fn edge_character_counts_are_unicode_scalar_values() {
        check(&[
            (r#"Left("Zoë😀x", 4)"#, &[], Some("Zoë😀")),
            (r#"Mid("Zoë😀x", 3, 2)"#, &[], Some("ë😀")),
        ]);
    }

    #[test]
    fn edge_numeric_arguments_trim_and_otherwise_give_null() {
        check(&[
            ("Left([s], [n])", &[("s", "abcdef"), ("n", " 2 ")], Some("ab")),
            ("Left([s], [n])", &[("s", "abcdef"), ("n", "two")], None),
            ("Left([s], [n])", &[("s", "abcdef")], None),
            (r#"Mid([s], "2", [n])"#, &[("s", "abcdef"), ("n", "1.5")], None),
            ("Word([s], [n], \" \")", &[("s", "a b")], None),
        ]);
        assert_error(
            r#"Left([s], "two")"#,
            10,
            ParseErrorKind::InvalidArgument,
            "must be an integer",
        );
    }

    #[test]
    fn edge_append_treats_null_as_empty() {
        check(&[
            (r#"Append([missing], ".test")"#, &[], Some(".test")),
            (r#"Append("x", [missing])"#, &[], Some("x")),
            ("Append([missing], [other])", &[], None),
        ]);
    }

    #[test]
    fn edge_coalesce_returns_an_empty_string() {
        check(&[(
            "Coalesce([mail], [userPrincipalName])",
            &[("mail", ""), ("userPrincipalName", "u")],
            Some(""),
        )]);
    }

    #[test]
    fn edge_iif_null_compares_as_empty_string() {
        let other = r#"IIF([country]="","Other",[country])"#;
        check(&[
            (other, &[], Some("Other")),
            (other, &[("country", "")], Some("Other")),
            (other, &[("country", "NL")], Some("NL")),
            (r#"IIF([a] < "b", "lt", "ge")"#, &[], Some("lt")),
        ]);
    }

    #[test]
    fn edge_iif_compares_integers_numerically_and_other_strings_ordinally() {
        check(&[
            (r#"IIF([n] > "9", "gt", "le")"#, &[("n", "10")], Some("gt")),
            (r#"IIF([n] = 7, "eq", "ne")"#, &[("n", "007")], Some("eq")),
            (r#"IIF([n] < -1, "lt", "ge")"#, &[("n", "-2")], Some("lt")),
            (r#"IIF([n] > "9", "gt", "le")"#, &[("n", "10a")], Some("le")),
            (r#"IIF([n] < "b", "lt", "ge")"#, &[("n", "B")], Some("lt")),
            (r#"IIF([n] > "z", "gt", "le")"#, &[("n", "é")], Some("gt")),
        ]);
    }

    #[test]
    fn edge_truth_is_true_ignoring_ascii_case() {
        check(&[
            (r#"IIF([enabled], "on", "off")"#, &[("enabled", "true")], Some("on")),
            (r#"IIF([enabled], "on", "off")"#, &[("enabled", "TRUE")], Some("on")),
            (r#"IIF([enabled], "on", "off")"#, &[("enabled", "1")], Some("off")),
            (r#"IIF([enabled], "on", "off")"#, &[], Some("off")),
            ("Not([enabled])", &[], Some("True")),
            ("Not([enabled])", &[("enabled", "true")], Some("False")),
        ]);
    }

    #[test]
    fn edge_join_skips_empty_values_and_joins_nothing_to_empty() {
        check(&[
            (
                r#"Join(".", [a], [missing], "", [b])"#,
                &[("a", "x"), ("b", "y")],
                Some("x.y"),
            ),
            ("Join([missing], [a], [b])", &[("a", "x"), ("b", "y")], Some("xy")),
            (r#"Join(".", [missing], "")"#, &[], Some("")),
            (r#"Join(".", [a])"#, &[("a", "x")], Some("x")),
        ]);
    }

    #[test]
    fn edge_mid_out_of_range() {
        check(&[
            (r#"Mid("abc", 2, 10)"#, &[], Some("bc")),
            (r#"Mid("abc", 4, 1)"#, &[], Some("")),
            (r#"Mid("abc", 0, 1)"#, &[], None),
            (r#"Mid("abc", 1, -1)"#, &[], None),
            (r#"Mid("abc", 1, 0)"#, &[], Some("")),
            ("Mid([missing], 1, 1)", &[], None),
        ]);
    }

    #[test]
    fn edge_normalize_diacritics_leaves_other_scripts_alone() {
        check(&[
            (
                "NormalizeDiacritics([v])",
                &[("v", "Ελένη Đorđe Łukasz Ærø")],
                Some("Ελένη Dorde Lukasz AEroe"),
            ),
            ("NormalizeDiacritics([v])", &[("v", "Йосиф")], Some("Йосиф")),
            ("NormalizeDiacritics([v])", &[("v", "ẞ")], Some("SS")),
        ]);
    }

    #[test]
    fn edge_replace_with_null_or_empty_values() {
        check(&[
            (r#"Replace([s], "", , , "x", , )"#, &[("s", "abc")], Some("abc")),
            (r#"Replace([s], [missing], , , "x", , )"#, &[("s", "abc")], Some("abc")),
            (r#"Replace([s], "b", , , [missing], , )"#, &[("s", "abcb")], Some("ac")),
            (r#"Replace([s], "aa", , , "b", , )"#, &[("s", "aaa")], Some("ba")),
            (r#"Replace([missing], "a", , , "b", , )"#, &[], None),
        ]);
    }

    #[test]
    fn edge_strip_spaces_removes_only_the_space_character() {
        check(&[("StripSpaces([s])", &[("s", "a b\tc\u{a0}d")], Some("ab\tc\u{a0}d"))]);
    }

    #[test]
    fn edge_switch_with_a_key_without_value_is_refused() {
        assert_error(
            r#"Switch([a], "d", "k1", "v1", "k2")"#,
            29,
            ParseErrorKind::WrongArgumentCount,
            "no value",
        );
        assert_error(
            r#"Switch([a], "d")"#,
            0,
            ParseErrorKind::WrongArgumentCount,
            "at least one key/value pair",
        );
        check(&[
            (r#"Switch([a], , "k", "v")"#, &[("a", "other")], None),
            (r#"Switch([a], "d", "K", "v")"#, &[("a", "k")], Some("d")),
            (r#"Switch([a], "d", [key], "v")"#, &[], Some("v")),
        ]);
    }

    #[test]
    fn edge_case_mapping_is_one_to_one() {
        check(&[
            ("ToUpper([s])", &[("s", "straße")], Some("STRAßE")),
            ("ToLower([s])", &[("s", "İSTANBUL ΣΑΣ")], Some("istanbul σασ")),
            (r#"ToLower([s], "tr-TR")"#, &[("s", "I")], Some("i")),
        ]);
    }

    #[test]
    fn edge_word_delimiter_runs_and_missing_delimiters() {
        check(&[
            (r#"Word("a,,b", 2, ",")"#, &[], Some("b")),
            (r#"Word("abc", 1, ",")"#, &[], Some("abc")),
            (r#"Word("a b", 1, "")"#, &[], Some("a b")),
            (r#"Word("a b", 1, [missing])"#, &[], Some("a b")),
            (r#"Word("a b", -1, " ")"#, &[], Some("")),
        ]);
    }

    #[test]
    fn edge_nesting_is_limited() {
        let nested = |depth: usize| format!("{}[a]{}", "Not(".repeat(depth), ")".repeat(depth));
        assert!(Expr::parse(&nested(MAX_DEPTH)).is_ok());
        assert_error(&nested(MAX_DEPTH + 1), 4 * MAX_DEPTH, ParseErrorKind::TooDeep, "nested");
        assert_error(
            &"Not(".repeat(100_000),
            4 * MAX_DEPTH,
            ParseErrorKind::TooDeep,
            "nested",
        );
    }

    // Grammar.

    #[test]
    fn whitespace_is_allowed_between_tokens() {
        let expression = "\n  Join ( \".\" ,\t[a] ,\r\n Mid( [b] , 1 , 2 ) )  ";
        assert_eq!(eval(expression, &[("a", "x"), ("b", "yz!")]), some("x.yz"));
        assert_eq!(eval(r#"IIF( [a]<>"b" , "1" , "2" )"#, &[("a", "c")]), some("1"));
        assert_eq!(eval("  [a]  ", &[("a", "v")]), some("v"));
    }

    #[test]
    fn names_are_case_sensitive() {
        assert_eq!(eval("[Mail]", &[("mail", "m")]), None);
        assert_error(
            "toLower([a])",
            0,
            ParseErrorKind::UnknownFunction,
            "did you mean ToLower?",
        );
        // The reference itself writes switch( in one example.
        assert_error(
            r#"switch([companyName], "External", "Company A", "A")"#,
            0,
            ParseErrorKind::UnknownFunction,
            "Switch",
        );
    }

    #[test]
    fn a_bare_attribute_or_constant_is_an_expression() {
        assert_eq!(eval("[mail]", &[("mail", "m@x")]), some("m@x"));
        assert_eq!(eval("[mail]", &[]), None);
        assert_eq!(eval(r#""constant""#, &[]), some("constant"));
        assert_eq!(eval("-42", &[]), some("-42"));
        assert_eq!(eval("007", &[]), some("7"));
    }

    #[test]
    fn attributes_lists_every_attribute_read() {
        let expr = Expr::parse(
            r#"IIF([a] = [b], Switch([c], [d], "k", [e]), Replace(Word([f], [g], [h]), [i], , , [j], , ))"#,
        )
        .unwrap();
        let names: Vec<&str> = expr.attributes().into_iter().collect();
        assert_eq!(names, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
    }

    #[test]
    fn evaluation_borrows_attribute_values_and_constants() {
        let expr = Expr::parse(r#"Coalesce(Left([a], 2), "c")"#).unwrap();
        let value = expr.eval(&|_| Some("abc"));
        assert!(matches!(value, Some(Cow::Borrowed("ab"))));
        let expr = Expr::parse(r#"Switch([a], "d", "x", [b])"#).unwrap();
        assert!(matches!(expr.eval(&|_| Some("x")), Some(Cow::Borrowed("x"))));
    }

    // Errors and their 0-based character positions.

    #[test]
    fn parse_errors_report_the_character_position() {
        use ParseErrorKind::*;
        let cases: &[(&str, usize, ParseErrorKind, &str)] = &[
            ("Left([mail] 3)", 12, UnexpectedCharacter, "expected ',' or ')'"),
            (r#"Append([a], "abc"#, 12, UnclosedString, "closing '\"'"),
            (r#"Append([a], "abc\"#, 12, UnclosedString, "closing '\"'"),
            (r#"Append("é", @)"#, 12, UnexpectedCharacter, "'@'"),
            (r#""a\nb""#, 2, InvalidEscape, r"'\n'"),
            ("Foo([a])", 0, UnknownFunction, "unknown function Foo"),
            ("Append(Foo([a]), \"x\")", 7, UnknownFunction, "unknown function Foo"),
            ("PCase([a])", 0, UnknownFunction, "not supported"),
            ("mail", 0, UnknownFunction, "[mail]"),
            ("Append([a])", 0, WrongArgumentCount, "takes 2 arguments, found 1"),
            (
                "ToLower(Left([a]))",
                8,
                WrongArgumentCount,
                "Left(source, numChars) takes 2 arguments",
            ),
            ("IIF([a], \"x\")", 0, WrongArgumentCount, "takes 3 arguments"),
            ("ToLower()", 0, WrongArgumentCount, "1 to 2 arguments, found 0"),
            ("Coalesce()", 0, WrongArgumentCount, "at least 1"),
            ("Append([a], )", 12, InvalidArgument, "argument 2"),
            ("Append( , [a])", 8, InvalidArgument, "argument 1"),
            ("Append([a], \"b\"", 15, UnexpectedEnd, "missing ')'"),
            ("Append [a]", 7, UnexpectedCharacter, "expected '('"),
            (
                "Append([a]=\"b\", \"c\")",
                10,
                MisplacedComparison,
                "only allowed as the condition of IIF",
            ),
            ("[a] = \"b\"", 4, MisplacedComparison, "condition of IIF"),
            ("IIF([a] = [b] = [c], 1, 2)", 14, MisplacedComparison, "one comparison"),
            ("IIF([a], [b] = [c], 2)", 13, MisplacedComparison, "condition of IIF"),
            ("[a] [b]", 4, UnexpectedCharacter, "after the end"),
            ("   ", 3, UnexpectedEnd, "empty"),
            ("Append([a], ", 12, UnexpectedEnd, "missing ')'"),
            ("IIF([a] = , 1, 2)", 10, UnexpectedCharacter, "expected an [attribute]"),
            ("[mail", 0, UnclosedAttribute, "']'"),
            ("[]", 0, InvalidAttributeName, "empty"),
            ("[first name]", 6, InvalidAttributeName, "U+0020"),
            ("Left([a], 99999999999999999999)", 10, InvalidInteger, "out of range"),
            ("Left([a], -)", 10, InvalidInteger, "digits"),
            ("Append([a], 3x)", 13, UnexpectedCharacter, "'x'"),
        ];
        for (expression, position, kind, needle) in cases {
            assert_error(expression, *position, *kind, needle);
        }
    }

    #[test]
    fn parse_error_display_names_the_position() {
        let error = error("Left([mail] 3)");
        assert_eq!(
            error.to_string(),
            "unexpected '3' in the arguments: expected ',' or ')' (at character 12)"
        );
    }

    /// Fragments of the grammar, so that random text often gets deep into the parser.
    const TOKENS: &[&str] = &[
        "Append(", "IIF(", "Switch(", "Replace(", "Mid(", "Word(", "Join(", "Left(", "Not(", "[", "]", "[a]", "\"",
        "\\", "\"x\"", "(", ")", ",", ", ", "=", "<", ">", "<>", "-", "1", "-3", "é", " ",
    ];

    fn token_soup() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TOKENS), 0..40).prop_map(|tokens| tokens.concat())
    }

    /// Function calls with the argument count each takes; `Replace` and `IIF` comparisons are
    /// written specially below.
    const CALLS: &[(&str, usize)] = &[
        ("Append", 2),
        ("Coalesce", 3),
        ("IIF", 3),
        ("IIF<", 3),
        ("IsNull", 1),
        ("IsNullOrEmpty", 1),
        ("IsPresent", 1),
        ("Join", 3),
        ("Left", 2),
        ("Mid", 3),
        ("NormalizeDiacritics", 1),
        ("Not", 1),
        ("Replace", 3),
        ("StripSpaces", 1),
        ("Switch", 4),
        ("ToLower", 1),
        ("ToUpper", 1),
        ("Word", 3),
    ];

    /// Well-formed expressions over the attributes `a`, `b` and `c`.
    fn expression_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            prop::sample::select(&["[a]", "[b]", "[c]"][..]).prop_map(str::to_owned),
            "[ a-zé1,-]{0,6}".prop_map(|value| quote(&value)),
            (-3i64..12).prop_map(|value| value.to_string()),
        ];
        leaf.prop_recursive(5, 48, 4, |inner| {
            (prop::sample::select(CALLS), prop::collection::vec(inner, 4)).prop_map(
                |((name, arity), args)| match name {
                    "Replace" => format!("Replace({}, {}, , , {}, , )", args[0], args[1], args[2]),
                    "IIF<" => format!("IIF({} <= {}, {}, {})", args[0], args[1], args[2], args[3]),
                    _ => format!("{name}({})", args[..arity].join(", ")),
                },
            )
        })
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(text in any::<String>()) {
            let _ = Expr::parse(&text);
        }

        #[test]
        fn parsing_and_evaluating_token_soup_never_panics(text in token_soup()) {
            match Expr::parse(&text) {
                Ok(expr) => {
                    let _ = expr.eval(&|name| (name == "a").then_some("a b-1"));
                }
                Err(error) => prop_assert!(error.position <= text.chars().count()),
            }
        }

        #[test]
        fn well_formed_expressions_evaluate_without_panicking(
            text in expression_text(),
            values in prop::collection::vec(prop::option::of("[ a-zA-Zé1,-]{0,6}|-?[0-9]{1,3}|True"), 3),
        ) {
            match Expr::parse(&text) {
                Ok(expr) => {
                    let attrs = |name: &str| match name {
                        "a" => values[0].as_deref(),
                        "b" => values[1].as_deref(),
                        "c" => values[2].as_deref(),
                        _ => None,
                    };
                    let _ = expr.eval(&attrs);
                }
                // A string constant where an integer is expected is the only error left.
                Err(error) => prop_assert_eq!(error.kind, ParseErrorKind::InvalidArgument, "{}: {}", text, error),
            }
        }

        #[test]
        fn a_quoted_string_evaluates_to_itself(value in any::<String>()) {
            let expr = Expr::parse(&quote(&value)).unwrap();
            prop_assert_eq!(expr.eval(&|_| None), Some(Cow::Borrowed(value.as_str())));
        }

        #[test]
        fn a_quoted_string_with_quotes_and_backslashes_evaluates_to_itself(value in "[\"\\\\a é]{0,20}") {
            let expr = Expr::parse(&format!("Append({}, \"\")", quote(&value))).unwrap();
            let evaluated = expr.eval(&|_| None);
            prop_assert_eq!(evaluated.as_deref(), Some(value.as_str()));
        }
    }
}

//! The one error shape every layer uses for bad input: which field, and the
//! rule it broke. `api` turns it into `INVALID_ARGUMENT` with this text.

/// A client-supplied value that breaks a rule, e.g.
/// `spec.layers[1].units must be 1..=4096, got 0`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {rule}")]
pub struct InvalidField {
    pub field: String,
    pub rule: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// Checks `min <= value <= max` and names the field when it does not hold.
pub fn check_range<T>(field: &str, value: T, min: T, max: T) -> Result<T, InvalidField>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < min || value > max {
        return Err(InvalidField::new(
            field,
            format!("must be {min}..={max}, got {value}"),
        ));
    }
    Ok(value)
}

/// A client's value as an error message shows it: quoted, and cut to 64
/// characters (a 5 MB name must not come back as a 5 MB error).
pub fn shown(value: &str) -> String {
    const MAX_CHARS: usize = 64;
    match value.char_indices().nth(MAX_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes in all)", &value[..cut], value.len()),
    }
}

/// Checks a name that becomes part of a path: 1..=64 of `[A-Za-z0-9._-]`,
/// not starting with a dot.
pub fn check_name(field: &str, value: &str) -> Result<(), InvalidField> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!(
                "must be 1..=64 characters of [A-Za-z0-9._-] not starting with '.', got {}",
                shown(value)
            ),
        ))
    }
}

//! The error of every parser of untrusted input.

/// Why a piece of untrusted input was refused.
///
/// Each variant names the field (`productKey`, `clientId`, `signmethod`, ...) and never echoes
/// the value: the value may be a secret, or an attacker's attempt to inject text into a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The field exceeds its length cap (checked before anything else is looked at).
    #[error("{field} is longer than {max} bytes")]
    TooLong {
        /// The field's protocol name.
        field: &'static str,
        /// The cap, in bytes.
        max: usize,
    },
    /// The field is shorter than its minimum length.
    #[error("{field} is shorter than {min} characters")]
    TooShort {
        /// The field's protocol name.
        field: &'static str,
        /// The minimum, in characters.
        min: usize,
    },
    /// The field contains a character outside its alphabet (or a control character).
    #[error("{field} contains a character that is not allowed")]
    InvalidCharacter {
        /// The field's protocol name.
        field: &'static str,
    },
    /// A required field is absent.
    #[error("{field} is missing")]
    Missing {
        /// The field's protocol name.
        field: &'static str,
    },
    /// The field appears more than once.
    #[error("{field} appears more than once")]
    Duplicate {
        /// The field's protocol name.
        field: &'static str,
    },
    /// The field does not have the required shape.
    #[error("{field} is malformed: expected {expected}")]
    Malformed {
        /// The field's protocol name.
        field: &'static str,
        /// The shape the field must have.
        expected: &'static str,
    },
    /// The field is well formed but names something this crate does not support.
    #[error("{field} has an unsupported value")]
    Unsupported {
        /// The field's protocol name.
        field: &'static str,
    },
}

impl ParseError {
    pub(crate) fn from_invalid(
        field: &'static str,
        invalid: crate::ascii::Invalid,
        min: usize,
        max: usize,
    ) -> Self {
        use crate::ascii::Invalid;
        match invalid {
            Invalid::TooLong => Self::TooLong { field, max },
            Invalid::TooShort => Self::TooShort { field, min },
            Invalid::Character => Self::InvalidCharacter { field },
        }
    }
}

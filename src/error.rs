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

/// Displays an error and the errors it was caused by, outermost first, as one line:
/// `error: its source: …` (line breaks inside a message become spaces), for a log line or a
/// command's error message that must keep the cause.
///
/// ```
/// let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
/// let store = iotauth::store::StoreError::unavailable(io);
/// assert_eq!(
///     iotauth::ErrorChain(&store).to_string(),
///     "the store failed (permission): permission denied"
/// );
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl ErrorChain<'_> {
    /// The error and its sources, outermost first.
    pub fn iter(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        std::iter::successors(Some(self.0), |error| error.source())
    }
}

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = String::new();
        for error in self.iter() {
            let text = error.to_string();
            // An error that prints its source in its own message (`"malformed: {0}"`) would
            // show it twice.
            if !shown.is_empty() && shown.ends_with(&text) {
                continue;
            }
            if !shown.is_empty() {
                f.write_str(": ")?;
            }
            for (j, line) in text.lines().enumerate() {
                if j > 0 {
                    f.write_str(" ")?;
                }
                f.write_str(line)?;
            }
            shown = text;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

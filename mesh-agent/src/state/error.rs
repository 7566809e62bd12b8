//! Configuration errors that say where (file or API server, object, field),
//! what was wrong and what to do.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the object was read: a file's name, or `api-server`.
    pub origin: String,
    /// `Kind namespace/name`, or `document N` when the object has no name yet.
    pub object: Option<String>,
    /// Path of the field inside the object, e.g. `status.podIPs[0].ip`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The error as said on the object itself (a status condition): the
    /// field and what is wrong, without the origin and object it names.
    pub fn on_the_object(&self) -> String {
        match &self.field {
            Some(field) => format!("field {field}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

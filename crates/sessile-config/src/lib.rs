//! Sessile configuration: Gateway API objects -> defaults and validation -> `translate()` -> snapshot + statuses.
#![forbid(unsafe_code)]

pub mod load;
pub mod persistence;
pub mod raw;
pub mod resources;
pub mod status;
pub mod translate;

pub use load::{LoadError, Loaded, Loader};
pub use resources::{Object, Origin, Resources};
pub use status::ResourceStatus;
pub use translate::{CONTROLLER_NAME, TranslateOptions, Translation, translate};

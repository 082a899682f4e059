//! `sessile explain`: loads a configuration offline and explains one request against it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sessile_config::{Loader, TranslateOptions, translate};
use sessile_proxy::Shared;
use sessile_proxy::explain::{Query, explain};
use sessile_proxy::state::AccessLog;
use sessile_session::{KEY_FILE_NAME, KeyRing};

/// What `sessile explain` was asked.
pub struct ExplainArgs {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub session_keys: Option<PathBuf>,
    pub method: String,
    pub url: String,
    pub headers: Vec<String>,
    pub cookies: Vec<String>,
    pub json: bool,
}

/// Prints the explanation; exits 0 when explained, 2 when the input cannot be read.
pub fn run(args: &ExplainArgs) -> ExitCode {
    match render(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sessile explain: {e}");
            ExitCode::from(2)
        }
    }
}

/// The explanation as text or JSON (the whole of `run` but printing, for tests).
pub fn render(args: &ExplainArgs) -> Result<String, String> {
    let query = Query::parse(&args.method, &args.url, &args.headers, &args.cookies)?;
    let (keys, key_note) = key_ring(args.session_keys.as_deref(), &args.state_dir)?;
    // The gateway's first-seen times, so objects without creationTimestamp have the same age (and
    // conflicts the same winners) as in the gateway.
    let mut loader = Loader::with_memory_read_only(args.state_dir.join("first-seen.json"));
    let loaded = loader.load_path(&args.config).map_err(|e| e.to_string())?;
    let opts = TranslateOptions {
        naming_salt: keys.naming_salt().to_vec(),
        now: sessile_config::resources::format_timestamp(sessile_config::load::now_secs()),
        ..TranslateOptions::default()
    };
    let t = translate(&loaded.resources, &opts);
    let shared = Shared::new(keys, AccessLog::Off);
    shared.apply(t.snapshot, t.statuses);
    let mut ex = explain(&shared, &query, sessile_session::now_ms());
    ex.notes.extend(key_note);
    ex.notes.push(
        "offline: endpoint health is not known here (all endpoints count as healthy); \
         GET /explain on the admin port answers with the live state"
            .into(),
    );
    for e in &loaded.errors {
        ex.notes.push(format!("configuration error: {e}"));
    }
    if args.json {
        serde_json::to_string_pretty(&ex).map(|s| s + "\n").map_err(|e| e.to_string())
    } else {
        Ok(ex.to_string())
    }
}

/// The gateway's key ring (tokens and scope names depend on it); an ephemeral one, with a note, when none exists.
fn key_ring(session_keys: Option<&Path>, state_dir: &Path) -> Result<(KeyRing, Option<String>), String> {
    if let Some(path) = session_keys {
        return KeyRing::load(path).map(|k| (k, None)).map_err(|e| e.to_string());
    }
    let path = state_dir.join(KEY_FILE_NAME);
    if path.exists() {
        return KeyRing::load(&path).map(|k| (k, None)).map_err(|e| e.to_string());
    }
    let note = format!(
        "no key ring at {} (pass --state-dir or --session-keys of the gateway): tokens cannot be decoded \
         and generated session names differ from the gateway's",
        path.display()
    );
    Ok((KeyRing::generate(), Some(note)))
}

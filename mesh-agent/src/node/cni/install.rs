//! Installing the plugin on a node: its binary into the CNI bin directory
//! and its entry at the end of the node's network configuration list.
//!
//! Run as a long-lived container of the agent DaemonSet (`--watch`), it
//! puts the entry back when the node's network plugin rewrites its file.
//! It never removes the plugin when it stops: across an agent upgrade new
//! pods must wait for the new agent, not slip past uncaptured.
//! `mesh-agent cni uninstall` is the explicit way out.
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::plugin::PLUGIN_TYPE;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no network configuration in {0} (*.conflist or *.conf): the node's primary CNI plugin \
         must be installed first; nodemesh-cni chains after it"
    )]
    NoConfig(PathBuf),
    #[error("{path} is not a CNI network configuration: {why}")]
    BadConfig { path: PathBuf, why: String },
}

/// What the plugin's entry says.
#[derive(Debug, Clone)]
pub struct Entry {
    pub socket: PathBuf,
    pub exclude_namespaces: Vec<String>,
}

impl Entry {
    fn to_json(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "socket": self.socket,
            "excludeNamespaces": self.exclude_namespaces,
        })
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// The plugin binary to keep in the CNI bin directory: read once, and the
/// installed copy compared byte for byte only when its size or time
/// changed since it was last found right (`--watch` asks every few seconds).
pub struct Binary {
    bytes: Vec<u8>,
    target: PathBuf,
    right: Option<(u64, std::time::SystemTime)>,
}

impl Binary {
    pub fn read(plugin: &Path, bin_dir: &Path) -> Result<Self, InstallError> {
        Ok(Self {
            bytes: std::fs::read(plugin).map_err(io("reading the plugin binary", plugin))?,
            target: bin_dir.join(PLUGIN_TYPE),
            right: None,
        })
    }

    /// Copies the plugin into place (atomically) unless it is there.
    /// Returns whether it wrote.
    pub fn ensure(&mut self) -> Result<bool, InstallError> {
        let stamp = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|m| Ok((m.len(), m.modified()?)))
                .ok()
        };
        let now = stamp(&self.target);
        if now.is_some() && now == self.right {
            return Ok(false);
        }
        let wrote = !std::fs::read(&self.target).is_ok_and(|have| have == self.bytes);
        if wrote {
            write_atomically(&self.target, &self.bytes, 0o755)?;
        }
        self.right = stamp(&self.target);
        Ok(wrote)
    }
}

/// Adds (or updates) the entry in the node's primary configuration: the
/// first `*.conflist` / `*.conf` in name order, which is the one the
/// runtime uses. A single-plugin `.conf` becomes a `.conflist`. Returns the
/// file written, or `None` when it was already right.
pub fn install_entry(conf_dir: &Path, entry: &Entry) -> Result<Option<PathBuf>, InstallError> {
    let path = primary_config(conf_dir)?;
    let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| InstallError::BadConfig {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let bad = |why: &str| InstallError::BadConfig {
        path: path.clone(),
        why: why.to_owned(),
    };
    let is_list = path.extension().is_some_and(|e| e == "conflist");
    let list = if is_list {
        config
    } else {
        // A single plugin: its own type and settings become the list's first.
        let mut plugin = config
            .as_object()
            .ok_or_else(|| bad("not a JSON object"))?
            .clone();
        let mut list = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(v) = plugin.remove(key) {
                list.insert(key.to_owned(), v);
            }
        }
        list.insert("plugins".to_owned(), json!([plugin]));
        Value::Object(list)
    };
    let Some(updated) = with_entry(&list, &entry.to_json()).map_err(bad)? else {
        return Ok(None);
    };
    let target = if is_list {
        path.clone()
    } else {
        path.with_extension("conflist")
    };
    let mut bytes = serde_json::to_vec_pretty(&updated).expect("JSON always serializes");
    bytes.push(b'\n');
    write_atomically(&target, &bytes, 0o644)?;
    if target != path {
        std::fs::remove_file(&path).map_err(io("removing the converted", &path))?;
    }
    Ok(Some(target))
}

/// Removes the entry (and nothing else) from the primary configuration and
/// the binary from `bin_dir`.
pub fn uninstall(conf_dir: &Path, bin_dir: &Path) -> Result<(), InstallError> {
    if let Ok(path) = primary_config(conf_dir) {
        let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
        if let Ok(mut list) = serde_json::from_str::<Value>(&text)
            && let Some(plugins) = list["plugins"].as_array_mut()
        {
            let before = plugins.len();
            plugins.retain(|p| p["type"] != PLUGIN_TYPE);
            if plugins.len() != before {
                let mut bytes = serde_json::to_vec_pretty(&list).expect("JSON always serializes");
                bytes.push(b'\n');
                write_atomically(&path, &bytes, 0o644)?;
            }
        }
    }
    let binary = bin_dir.join(PLUGIN_TYPE);
    match std::fs::remove_file(&binary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &binary)(e)),
        _ => Ok(()),
    }
}

/// The list with the entry last and up to date; `None` if it already is.
fn with_entry(list: &Value, entry: &Value) -> Result<Option<Value>, &'static str> {
    let mut list = list.clone();
    let plugins = list
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("no \"plugins\" list")?;
    let ours = plugins.iter().position(|p| p["type"] == PLUGIN_TYPE);
    match ours {
        // Last, as written: nothing to do.
        Some(i) if i + 1 == plugins.len() && plugins[i] == *entry => return Ok(None),
        Some(i) => {
            plugins.remove(i);
        }
        None => {}
    }
    // Last: it needs the interface and addresses the plugins before it made.
    plugins.push(entry.clone());
    Ok(Some(list))
}

fn primary_config(conf_dir: &Path) -> Result<PathBuf, InstallError> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(io("reading the CNI configuration directory", conf_dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conflist" || e == "conf")
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig(conf_dir.to_owned()))
}

/// Writes beside `path` and renames over it, so the runtime never reads a
/// half-written file or runs a half-copied binary.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.nodemesh-tmp"));
    std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("replacing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            socket: "/var/run/nodemesh/cni.sock".into(),
            exclude_namespaces: vec!["kube-system".into()],
        }
    }

    #[test]
    fn the_entry_goes_last_once_and_is_kept_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let list = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#;
        std::fs::write(dir.path().join("10-k8s.conflist"), list).unwrap();
        std::fs::write(dir.path().join("99-other.conflist"), list).unwrap();
        let written = install_entry(dir.path(), &entry()).unwrap();
        assert_eq!(written, Some(dir.path().join("10-k8s.conflist")));
        assert_eq!(install_entry(dir.path(), &entry()).unwrap(), None);
        let read = |name: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(name)).unwrap()).unwrap()
        };
        let types: Vec<String> = read("10-k8s.conflist")["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(types, ["bridge", "portmap", PLUGIN_TYPE]);
        // Only the primary file is touched.
        assert_eq!(
            read("99-other.conflist"),
            serde_json::from_str::<Value>(list).unwrap()
        );
        let mut changed = entry();
        changed.exclude_namespaces.push("nodemesh-system".into());
        assert!(install_entry(dir.path(), &changed).unwrap().is_some());
        let plugins = read("10-k8s.conflist")["plugins"].clone();
        assert_eq!(plugins.as_array().unwrap().len(), 3);
        assert_eq!(plugins[2]["excludeNamespaces"][1], "nodemesh-system");
        uninstall(dir.path(), dir.path()).unwrap();
        assert_eq!(
            read("10-k8s.conflist"),
            serde_json::from_str::<Value>(list).unwrap()
        );
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let conf = r#"{"cniVersion":"0.4.0","name":"net","type":"bridge","bridge":"cni0"}"#;
        std::fs::write(dir.path().join("10-net.conf"), conf).unwrap();
        let written = install_entry(dir.path(), &entry()).unwrap().unwrap();
        assert_eq!(written, dir.path().join("10-net.conflist"));
        assert!(!dir.path().join("10-net.conf").exists());
        let list: Value = serde_json::from_str(&std::fs::read_to_string(written).unwrap()).unwrap();
        assert_eq!(list["cniVersion"], "0.4.0");
        assert_eq!(list["plugins"][0]["bridge"], "cni0");
        assert_eq!(list["plugins"][1]["type"], PLUGIN_TYPE);
    }

    #[test]
    fn no_configuration_says_what_to_install_first() {
        let dir = tempfile::tempdir().unwrap();
        let e = install_entry(dir.path(), &entry()).unwrap_err();
        assert!(e.to_string().contains("primary CNI plugin"), "{e}");
    }

    #[test]
    fn the_binary_is_copied_only_when_it_differs() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("built");
        std::fs::write(&plugin, b"v1").unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let install = || Binary::read(&plugin, &bin).unwrap().ensure().unwrap();
        assert!(install());
        assert!(!install());
        std::fs::write(&plugin, b"v2").unwrap();
        assert!(install());
        assert_eq!(std::fs::read(bin.join(PLUGIN_TYPE)).unwrap(), b"v2");
    }
}

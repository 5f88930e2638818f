//! `redact = ["command.Data.Email", …]`: values at these paths of the record are replaced by
//! `"***"` before this sink sees it. The journal keeps everything; other sinks are unaffected.

use serde_json::Value;

use crate::journal::StoredRecord;

/// What replaces a redacted value.
pub const MASK: &str = "***";

/// A sink's redaction paths.
#[derive(Debug, Default)]
pub struct Redactor {
    paths: Vec<Vec<String>>,
    /// `"<last segment>"` of each path: a record without any of them is left alone unparsed.
    needles: Vec<Vec<u8>>,
}

impl Redactor {
    /// Dot-separated paths from the record's top level (validated by the config).
    pub fn new(paths: &[String]) -> Self {
        let paths: Vec<Vec<String>> = paths
            .iter()
            .map(|p| p.split('.').map(str::to_owned).collect())
            .collect();
        let needles = paths
            .iter()
            .filter_map(|p| p.last())
            .map(|last| format!("\"{last}\"").into_bytes())
            .collect();
        Redactor { paths, needles }
    }

    /// Whether there is anything to redact at all.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The record with the paths masked, or `None` when it holds none of them.
    pub fn apply(&self, record: &StoredRecord) -> Option<StoredRecord> {
        let json = &record.json;
        if !self
            .needles
            .iter()
            .any(|n| json.windows(n.len()).any(|w| w == n.as_slice()))
        {
            return None;
        }
        let mut value: Value = serde_json::from_slice(json).ok()?;
        let mut changed = false;
        for path in &self.paths {
            changed |= mask(&mut value, path);
        }
        if !changed {
            return None;
        }
        let json = serde_json::to_vec(&value).ok()?;
        Some(StoredRecord {
            json: json.into(),
            ..record.clone()
        })
    }
}

/// Masks the value at `path`, if there is one.
fn mask(value: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = value;
    for key in parents {
        match at.get_mut(key.as_str()) {
            Some(next) => at = next,
            None => return false,
        }
    }
    match at.as_object_mut().and_then(|o| o.get_mut(last.as_str())) {
        Some(target) => {
            *target = Value::String(MASK.into());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::stdout::test_record as record;

    #[test]
    fn configured_paths_are_masked_and_nothing_else() {
        let r = Redactor::new(&["command.Data.Email".into(), "command.Data.Telephone".into()]);
        let out = r
            .apply(&record(
                r#"{"seq":1,"command":{"Data":{"Email":"a@b.c","LastName":"Novak","Telephone":"+420"}},"event":{"Email":"keep"}}"#,
            ))
            .unwrap();
        assert_eq!(
            String::from_utf8(out.json.to_vec()).unwrap(),
            r#"{"seq":1,"command":{"Data":{"Email":"***","LastName":"Novak","Telephone":"***"}},"event":{"Email":"keep"}}"#
        );
    }

    #[test]
    fn records_without_the_paths_pass_untouched() {
        let r = Redactor::new(&["command.Data.Email".into()]);
        assert!(
            r.apply(&record(r#"{"seq":1,"event":{"Type":"Resource"}}"#))
                .is_none()
        );
        // The key appears, but not at the path.
        assert!(
            r.apply(&record(r#"{"seq":1,"event":{"Email":"x"}}"#))
                .is_none()
        );
    }
}

//! `/api/v1/tasks` and `/api/v1/tasks/{id}`: the latest message of every
//! task that has not ended, as JSON, each exactly as it went to stdout
//! (and, if exported, to MQTT): for scripts and `propmon top --connect`.
//!
//! `/api/v1/tasks` is `{"tasks":[MESSAGE, ...]}`, sorted by task id;
//! `/api/v1/tasks/{id}` is one MESSAGE, or `{"error":"..."}` with 404.

use std::sync::Arc;

use serde::Serialize;

use crate::message::TaskMetricsMessage;

pub const CONTENT_TYPE: &str = "application/json";

#[derive(Serialize)]
struct Tasks<'a> {
    tasks: Vec<&'a TaskMetricsMessage>,
}

pub fn tasks(latest: &[Arc<TaskMetricsMessage>]) -> serde_json::Result<Vec<u8>> {
    let tasks = latest.iter().map(Arc::as_ref).collect();
    serde_json::to_vec(&Tasks { tasks })
}

pub fn task(message: &TaskMetricsMessage) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(message)
}

/// `{"error": WHY}`.
pub fn error(why: &str) -> Vec<u8> {
    serde_json::json!({ "error": why }).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::latest::tests::message;

    #[test]
    fn messages_keep_their_shape() {
        let latest = vec![
            Arc::new(message("a", 2, false)),
            Arc::new(message("b", 1, false)),
        ];
        let json: serde_json::Value = serde_json::from_slice(&tasks(&latest).unwrap()).unwrap();
        let first: TaskMetricsMessage = serde_json::from_value(json["tasks"][0].clone()).unwrap();
        assert_eq!(first, *latest[0]);
        assert_eq!(json["tasks"][1]["task_id"], "b");
        let one: TaskMetricsMessage = serde_json::from_slice(&task(&latest[1]).unwrap()).unwrap();
        assert_eq!(one, *latest[1]);
        let error: serde_json::Value = serde_json::from_slice(&error("no \"x\"")).unwrap();
        assert_eq!(error["error"], "no \"x\"");
    }
}

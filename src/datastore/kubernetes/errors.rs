//! Kubernetes API errors → the datastore's neutral errors, worded for the operator.

use super::DatastoreError;

/// Maps an error of a request about `kind`/`name` (`name` empty for lists and watches).
pub fn map_err(kind: &str, name: &str, e: kube::Error) -> DatastoreError {
    let (kind_s, name_s) = (kind.to_string(), name.to_string());
    match e {
        kube::Error::Api(status) => {
            let detail = if status.message.is_empty() {
                format!("HTTP {} {}", status.code, status.reason)
            } else {
                format!("HTTP {}: {}", status.code, status.message)
            };
            match status.code {
                404 => DatastoreError::NotFound {
                    kind: kind_s,
                    name: name_s,
                },
                409 if status.is_already_exists() => DatastoreError::AlreadyExists {
                    kind: kind_s,
                    name: name_s,
                },
                409 => DatastoreError::Conflict {
                    kind: kind_s,
                    name: name_s,
                    detail,
                },
                410 => DatastoreError::Expired {
                    kind: kind_s,
                    version: String::new(),
                    detail,
                },
                400 | 422 => DatastoreError::Invalid {
                    kind: kind_s,
                    name: name_s,
                    reason: detail,
                },
                401 => DatastoreError::Forbidden {
                    kind: kind_s,
                    name: name_s,
                    detail: format!(
                        "the API server does not accept the agent's credentials ({detail}); check \
                         the kubeconfig's token or certificate, or the pod's service account"
                    ),
                },
                403 => DatastoreError::Forbidden {
                    kind: kind_s,
                    name: name_s,
                    detail: format!(
                        "{detail}; grant the agent's service account the ferrovia ClusterRole \
                         (the chart's RBAC)"
                    ),
                },
                429 | 500 | 502 | 503 | 504 => DatastoreError::Unavailable {
                    detail: format!("the Kubernetes API server cannot serve now ({detail})"),
                },
                _ => DatastoreError::Backend {
                    detail: format!("the Kubernetes API server refused {kind} {name:?}: {detail}"),
                },
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            DatastoreError::Unavailable {
                detail: format!("cannot reach the Kubernetes API server: {e}"),
            }
        }
        kube::Error::SerdeError(_) => DatastoreError::Invalid {
            kind: kind_s,
            name: name_s,
            reason: format!("the API server's answer does not decode: {e}"),
        },
        other => DatastoreError::Backend {
            detail: format!("Kubernetes client error on {kind} {name:?}: {other}"),
        },
    }
}

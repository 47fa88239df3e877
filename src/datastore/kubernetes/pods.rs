//! Leak collection's [`PodDirectory`] on the API server: core v1 Pods, read one by one
//! (metadata only) through the backend's client. A Pod that exists with another UID than
//! the handle's is another pod (re-created under the same name); any error — the API server
//! down or slow, the token not allowed to read pods — is "cannot tell", which never
//! releases anything.

use super::KubeStore;
use ferrovia_ipam::PodDirectory;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use std::time::Duration;

/// How long one Pod lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Pods on the Kubernetes API server.
#[derive(Clone)]
pub struct KubePods {
    client: kube::Client,
}

impl KubeStore {
    /// The Pods of the cluster this store is on, for leak collection.
    pub fn pod_directory(&self) -> KubePods {
        KubePods {
            client: self.client.clone(),
        }
    }
}

#[async_trait::async_trait]
impl PodDirectory for KubePods {
    async fn pod_uid(&self, namespace: &str, name: &str) -> Result<Option<String>, String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata_opt(name)).await {
            Err(_) => Err(format!(
                "the Kubernetes API server did not answer within {}s",
                LOOKUP_TIMEOUT.as_secs()
            )),
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(meta))) => match meta.metadata.uid {
                Some(uid) => Ok(Some(uid)),
                None => Err("the API server returned a Pod without a UID".into()),
            },
            Ok(Err(kube::Error::Api(status))) if status.code == 403 => Err(format!(
                "the agent may not read Pods ({}): grant its service account get on pods \
                 (the chart's ClusterRole does)",
                status.message
            )),
            Ok(Err(e)) => Err(format!("reading the Pod failed: {e}")),
        }
    }
}

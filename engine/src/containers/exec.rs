//! ExecSync.

use berth_proto::monitor::{self as mproto, frame::Body};

use crate::Engine;
use crate::error::{Error, Result};
use crate::monitor::{client, wire};

impl Engine {
    /// ExecSync: runs `cmd` in the running container; (exit code, stdout, stderr).
    /// Each output stream is kept up to 8 MiB, so that a reply fits a gRPC message.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout_secs: i64,
    ) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        const OUTPUT_LIMIT: u64 = 8 << 20;
        let c = self.running_container(id)?;
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(Error::InvalidArgument("cmd is empty".into()));
        }
        let spec = crate::linux::spawn::ExecSpec::for_container(&c.launch, cmd.to_vec());
        let protocol = self.pod(&c.pod_id)?.monitor_protocol;
        let (exec_spec, exec_spec_json) =
            wire::exec_request(protocol, &spec).map_err(|e| Error::Internal(e.to_string()))?;
        let r = client::request(
            &self.pod_dir(&c.pod_id),
            Body::Exec(mproto::Exec {
                container_id: id.to_owned(),
                exec_spec_json,
                timeout_ms: timeout_secs.saturating_mul(1000).max(0),
                output_limit: OUTPUT_LIMIT,
                exec_spec,
            }),
        )
        .await?;
        match r {
            Body::ExecResult(x) if x.timed_out => Err(Error::DeadlineExceeded(format!(
                "exec in container {id} timed out after {timeout_secs}s; the process and its children were killed"
            ))),
            Body::ExecResult(x) => Ok((x.exit_code, x.stdout, x.stderr)),
            other => Err(Error::Internal(format!(
                "monitor answered {other:?} to Exec"
            ))),
        }
    }
}

//! ExecSync.

use berth_proto::monitor::{self as mproto, frame::Body};

use crate::Engine;
use crate::error::{Error, Result};
use crate::monitor::{client, wire};

/// Bytes of stdout (and, apart, of stderr) an ExecSync answer carries at most: both
/// together stay below the monitor's frame limit and gRPC's default 4 MiB.
pub const EXEC_OUTPUT_LIMIT: u64 = (berth_proto::monitor::MAX_FRAME as u64 / 2) - 16 * 1024;

impl Engine {
    /// ExecSync: runs `cmd` in the running container; (exit code, stdout, stderr).
    ///
    /// Each output stream is cut off after [`EXEC_OUTPUT_LIMIT`] bytes (the process keeps
    /// running and its further output is read and dropped), so that the answer fits the
    /// monitor's frame and the 4 MiB a gRPC client receives by default; kubelet reads only
    /// a prefix of a probe's output. A timeout is always DeadlineExceeded.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout_secs: i64,
    ) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let c = self.running_container(id)?;
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(Error::InvalidArgument("cmd is empty".into()));
        }
        let spec = crate::linux::spawn::ExecSpec::for_container(&c.launch, cmd.to_vec());
        let protocol = self.monitor_protocol(&c.pod_id)?;
        let (exec_spec, exec_spec_json) =
            wire::exec_request(protocol, &spec).map_err(|e| Error::Internal(e.to_string()))?;
        let dir = self.pod_dir(&c.pod_id);
        let call = client::request(
            &dir,
            Body::Exec(Box::new(mproto::Exec {
                container_id: id.to_owned(),
                exec_spec_json,
                timeout_ms: timeout_secs.saturating_mul(1000).max(0),
                output_limit: EXEC_OUTPUT_LIMIT,
                exec_spec,
            })),
        );
        // The monitor kills the process at the timeout and answers; should it not, the
        // call still ends as a timeout, not as a hang.
        let r = if timeout_secs > 0 {
            let grace =
                std::time::Duration::from_secs(u64::try_from(timeout_secs).unwrap_or(0) + 10);
            tokio::time::timeout(grace, call).await.map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "exec in container {id} timed out after {timeout_secs}s and the pod's monitor did not answer"
                ))
            })??
        } else {
            call.await?
        };
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

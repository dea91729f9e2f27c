//! berth-metrics: berth's Prometheus metric families and their text exposition.
//!
//! Knows nothing of the engine. Two kinds of families: those recorded as things happen
//! ([`Metrics`]: CRI requests, pull and network set-up durations, OOM kills), and those
//! computed at scrape time from a [`Snapshot`] the engine fills (pods and containers by
//! state, resource usage per pod and container, pull totals). Names follow Prometheus
//! conventions: `berth_` prefix, base units, `_total` for counters.
#![forbid(unsafe_code)]

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, Opts, Registry, TextEncoder,
};

/// Errors of the metrics registry.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("prometheus: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// The families recorded as things happen.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub cri_requests: IntCounterVec,
    pub cri_request_duration: HistogramVec,
    pub image_pull_duration: Histogram,
    pub network_setup_duration: HistogramVec,
    pub oom_kills: IntCounter,
}

/// Latency buckets from 0.5 ms to 60 s (CRI calls range from sub-millisecond status calls
/// to minute-long pulls).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let cri_requests = IntCounterVec::new(
            Opts::new(
                "berth_cri_requests_total",
                "CRI requests served, by method and gRPC code.",
            ),
            &["method", "code"],
        )?;
        let cri_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "berth_cri_request_duration_seconds",
                "Time to serve a CRI request, by method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )?;
        let image_pull_duration = Histogram::with_opts(
            HistogramOpts::new(
                "berth_image_pull_duration_seconds",
                "Time to pull an image, successful or not.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let network_setup_duration = HistogramVec::new(
            HistogramOpts::new(
                "berth_pod_network_setup_duration_seconds",
                "Time to give a pod its network, by mode (builtin or cni).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["mode"],
        )?;
        let oom_kills = IntCounter::new(
            "berth_oom_kills_total",
            "Containers that ended because the kernel's OOM killer killed a process in them.",
        )?;
        registry.register(Box::new(cri_requests.clone()))?;
        registry.register(Box::new(cri_request_duration.clone()))?;
        registry.register(Box::new(image_pull_duration.clone()))?;
        registry.register(Box::new(network_setup_duration.clone()))?;
        registry.register(Box::new(oom_kills.clone()))?;
        // berthd's own CPU, memory, file descriptors and start time (process_*).
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            cri_requests,
            cri_request_duration,
            image_pull_duration,
            network_setup_duration,
            oom_kills,
        })
    }

    /// The text exposition of every family: recorded ones and the snapshot's.
    pub fn render(&self, snapshot: &Snapshot) -> Result<String, MetricsError> {
        let mut families = self.registry.gather();
        families.extend(snapshot.families()?);
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// One container's usage.
#[derive(Debug, Clone, Default)]
pub struct ContainerSample {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub cpu_seconds: Option<f64>,
    pub memory_usage_bytes: Option<u64>,
    pub memory_working_set_bytes: Option<u64>,
    pub memory_rss_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub writable_layer_bytes: u64,
    pub processes: Option<u64>,
    /// Pressure stall time where the cgroup has PSI: (resource `cpu`, `memory` or `io`,
    /// seconds some tasks waited, seconds all tasks stalled).
    pub pressure: Vec<(&'static str, f64, f64)>,
}

/// One pod interface's counters.
#[derive(Debug, Clone, Default)]
pub struct InterfaceSample {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// One pod's usage.
#[derive(Debug, Clone, Default)]
pub struct PodSample {
    pub namespace: String,
    pub pod: String,
    pub cpu_seconds: Option<f64>,
    pub memory_working_set_bytes: Option<u64>,
    pub processes: Option<u64>,
    pub interfaces: Vec<InterfaceSample>,
}

/// What the engine reports at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Pods by state name.
    pub pods: Vec<(String, u64)>,
    /// Containers by state name.
    pub containers: Vec<(String, u64)>,
    pub monitors: u64,
    pub pulls: u64,
    pub pull_failures: u64,
    pub pull_bytes: u64,
    pub pod_samples: Vec<PodSample>,
    pub container_samples: Vec<ContainerSample>,
}

/// Converts byte counts to the f64 Prometheus carries (exact below 2^53).
fn f(v: u64) -> f64 {
    v as f64
}

impl Snapshot {
    fn families(&self) -> Result<Vec<prometheus::proto::MetricFamily>, MetricsError> {
        let mut out = Vec::new();
        let gauge =
            |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let counter = |name: &str, help: &str, labels: &[&str]| {
            CounterVec::new(Opts::new(name, help), labels)
        };

        let pods = gauge("berth_pods", "Pod sandboxes, by state.", &["state"])?;
        for (s, n) in &self.pods {
            pods.with_label_values(&[s]).set(f(*n));
        }
        let containers = gauge("berth_containers", "Containers, by state.", &["state"])?;
        for (s, n) in &self.containers {
            containers.with_label_values(&[s]).set(f(*n));
        }
        let monitors = gauge(
            "berth_monitor_processes",
            "Running per-pod monitor processes.",
            &[],
        )?;
        monitors
            .with_label_values::<&str>(&[])
            .set(f(self.monitors));
        let pulls = counter(
            "berth_image_pulls_total",
            "Image pulls, by result.",
            &["result"],
        )?;
        pulls
            .with_label_values(&["success"])
            .inc_by(f(self.pulls.saturating_sub(self.pull_failures)));
        pulls
            .with_label_values(&["failure"])
            .inc_by(f(self.pull_failures));
        let pull_bytes = counter(
            "berth_image_pull_bytes_total",
            "Bytes downloaded by image pulls.",
            &[],
        )?;
        pull_bytes
            .with_label_values::<&str>(&[])
            .inc_by(f(self.pull_bytes));

        let cl = &["namespace", "pod", "container"];
        let c_cpu = counter(
            "berth_container_cpu_usage_seconds_total",
            "CPU time used by a container.",
            cl,
        )?;
        let c_mem = gauge(
            "berth_container_memory_usage_bytes",
            "Memory charged to a container, page cache included.",
            cl,
        )?;
        let c_ws = gauge(
            "berth_container_memory_working_set_bytes",
            "A container's memory that cannot simply be reclaimed (usage minus inactive file); kubelet evicts on it.",
            cl,
        )?;
        let c_rss = gauge(
            "berth_container_memory_rss_bytes",
            "A container's anonymous memory.",
            cl,
        )?;
        let c_lim = gauge(
            "berth_container_memory_limit_bytes",
            "A container's memory limit, when it has one.",
            cl,
        )?;
        let c_layer = gauge(
            "berth_container_writable_layer_bytes",
            "Bytes in a container's writable layer.",
            cl,
        )?;
        let c_procs = gauge(
            "berth_container_processes",
            "Processes (tasks) in a container.",
            cl,
        )?;
        let prl = &["namespace", "pod", "container", "resource"];
        let c_waiting = counter(
            "berth_container_pressure_waiting_seconds_total",
            "Time some tasks of a container waited for a resource (PSI `some`), by resource.",
            prl,
        )?;
        let c_stalled = counter(
            "berth_container_pressure_stalled_seconds_total",
            "Time all tasks of a container stalled on a resource (PSI `full`), by resource.",
            prl,
        )?;
        for s in &self.container_samples {
            for (resource, waiting, stalled) in &s.pressure {
                let l = [
                    s.namespace.as_str(),
                    s.pod.as_str(),
                    s.container.as_str(),
                    resource,
                ];
                c_waiting.with_label_values(&l).inc_by(*waiting);
                c_stalled.with_label_values(&l).inc_by(*stalled);
            }
        }
        for s in &self.container_samples {
            let l = [s.namespace.as_str(), s.pod.as_str(), s.container.as_str()];
            if let Some(v) = s.cpu_seconds {
                c_cpu.with_label_values(&l).inc_by(v);
            }
            for (g, v) in [
                (&c_mem, s.memory_usage_bytes),
                (&c_ws, s.memory_working_set_bytes),
                (&c_rss, s.memory_rss_bytes),
                (&c_lim, s.memory_limit_bytes),
                (&c_procs, s.processes),
                (&c_layer, Some(s.writable_layer_bytes)),
            ] {
                if let Some(v) = v {
                    g.with_label_values(&l).set(f(v));
                }
            }
        }

        let pl = &["namespace", "pod"];
        let il = &["namespace", "pod", "interface"];
        let p_cpu = counter(
            "berth_pod_cpu_usage_seconds_total",
            "CPU time used by a pod (all its containers).",
            pl,
        )?;
        let p_ws = gauge(
            "berth_pod_memory_working_set_bytes",
            "A pod's working set memory.",
            pl,
        )?;
        let p_procs = gauge("berth_pod_processes", "Processes in a pod.", pl)?;
        let rx = counter(
            "berth_pod_network_receive_bytes_total",
            "Bytes received by a pod interface.",
            il,
        )?;
        let tx = counter(
            "berth_pod_network_transmit_bytes_total",
            "Bytes sent by a pod interface.",
            il,
        )?;
        let rxe = counter(
            "berth_pod_network_receive_errors_total",
            "Receive errors of a pod interface.",
            il,
        )?;
        let txe = counter(
            "berth_pod_network_transmit_errors_total",
            "Transmit errors of a pod interface.",
            il,
        )?;
        for s in &self.pod_samples {
            let l = [s.namespace.as_str(), s.pod.as_str()];
            if let Some(v) = s.cpu_seconds {
                p_cpu.with_label_values(&l).inc_by(v);
            }
            if let Some(v) = s.memory_working_set_bytes {
                p_ws.with_label_values(&l).set(f(v));
            }
            if let Some(v) = s.processes {
                p_procs.with_label_values(&l).set(f(v));
            }
            for i in &s.interfaces {
                let l = [s.namespace.as_str(), s.pod.as_str(), i.name.as_str()];
                rx.with_label_values(&l).inc_by(f(i.rx_bytes));
                tx.with_label_values(&l).inc_by(f(i.tx_bytes));
                rxe.with_label_values(&l).inc_by(f(i.rx_errors));
                txe.with_label_values(&l).inc_by(f(i.tx_errors));
            }
        }

        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(pods),
            Box::new(containers),
            Box::new(monitors),
            Box::new(pulls),
            Box::new(pull_bytes),
            Box::new(c_cpu),
            Box::new(c_mem),
            Box::new(c_ws),
            Box::new(c_rss),
            Box::new(c_lim),
            Box::new(c_layer),
            Box::new(c_procs),
            Box::new(c_waiting),
            Box::new(c_stalled),
            Box::new(p_cpu),
            Box::new(p_ws),
            Box::new(p_procs),
            Box::new(rx),
            Box::new(tx),
            Box::new(rxe),
            Box::new(txe),
        ];
        for c in collectors {
            // A family without samples is left out, as client libraries do.
            out.extend(
                c.collect()
                    .into_iter()
                    .filter(|m| !m.get_metric().is_empty()),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_and_snapshot_families() {
        let m = Metrics::new().unwrap();
        m.cri_requests.with_label_values(&["Version", "OK"]).inc();
        m.cri_request_duration
            .with_label_values(&["Version"])
            .observe(0.002);
        m.oom_kills.inc();
        let snap = Snapshot {
            pods: vec![("ready".into(), 2), ("notready".into(), 1)],
            containers: vec![("running".into(), 3)],
            monitors: 2,
            pulls: 5,
            pull_failures: 1,
            pull_bytes: 1 << 20,
            container_samples: vec![ContainerSample {
                namespace: "default".into(),
                pod: "web".into(),
                container: "nginx".into(),
                cpu_seconds: Some(1.5),
                memory_working_set_bytes: Some(4096),
                writable_layer_bytes: 10,
                pressure: vec![("cpu", 1.25, 0.5)],
                ..Default::default()
            }],
            pod_samples: vec![PodSample {
                namespace: "default".into(),
                pod: "web".into(),
                interfaces: vec![InterfaceSample {
                    name: "eth0".into(),
                    rx_bytes: 100,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let text = m.render(&snap).unwrap();
        for want in [
            "berth_cri_requests_total{code=\"OK\",method=\"Version\"} 1",
            "berth_cri_request_duration_seconds_bucket{method=\"Version\",le=\"0.0025\"} 1",
            "berth_oom_kills_total 1",
            "berth_container_pressure_waiting_seconds_total{container=\"nginx\",namespace=\"default\",pod=\"web\",resource=\"cpu\"} 1.25",
            "berth_container_pressure_stalled_seconds_total{container=\"nginx\",namespace=\"default\",pod=\"web\",resource=\"cpu\"} 0.5",
            "berth_pods{state=\"ready\"} 2",
            "berth_image_pulls_total{result=\"success\"} 4",
            "berth_image_pulls_total{result=\"failure\"} 1",
            "berth_container_cpu_usage_seconds_total{container=\"nginx\",namespace=\"default\",pod=\"web\"} 1.5",
            "berth_container_memory_working_set_bytes{container=\"nginx\",namespace=\"default\",pod=\"web\"} 4096",
            "berth_pod_network_receive_bytes_total{interface=\"eth0\",namespace=\"default\",pod=\"web\"} 100",
            "# TYPE berth_container_cpu_usage_seconds_total counter",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(want), "missing {want} in:\n{text}");
        }
        assert!(
            !text.contains("berth_container_memory_rss_bytes{"),
            "unset samples are left out"
        );
    }
}

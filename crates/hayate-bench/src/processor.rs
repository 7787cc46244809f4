//! The processor a CPU figure was measured on: its name, its hardware threads and the vector
//! extensions that decide which kernels run (gemm and oneDNN pick AVX-512 ones where they
//! exist), so that every figure names them: the same code's ratio to PyTorch moved from 0.19x to
//! 0.63x between two processors of one kind.

use serde::Serialize;

/// What a benchmark prints and records about the processor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Processor {
    /// The model name (`/proc/cpuinfo`'s "model name"), or "unknown" where it is not reported.
    pub name: String,
    /// Hardware threads this process may use.
    pub threads: usize,
    /// The vector extensions detected at run time, widest first (for example AVX-512F, AVX2,
    /// FMA); empty where none of those checked exist.
    pub vector: Vec<&'static str>,
}

impl Processor {
    /// The processor this process runs on.
    pub fn detect() -> Self {
        let name = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| model_name(&text))
            .unwrap_or_else(|| "unknown".into());
        Self {
            name,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            vector: vector_extensions(),
        }
    }

    /// One line: "AMD EPYC 7B13, 2 threads, AVX2 FMA (no AVX-512)".
    pub fn describe(&self) -> String {
        let vector = if self.vector.is_empty() {
            "no AVX2 or AVX-512".to_string()
        } else {
            let mut v = self.vector.join(" ");
            if cfg!(target_arch = "x86_64") && !self.vector.iter().any(|e| e.starts_with("AVX-512"))
            {
                v.push_str(" (no AVX-512)");
            }
            v
        };
        format!("{}, {} threads, {vector}", self.name, self.threads)
    }
}

/// The first "model name" of a `/proc/cpuinfo` text.
fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

#[cfg(target_arch = "x86_64")]
fn vector_extensions() -> Vec<&'static str> {
    let mut found = Vec::new();
    if std::arch::is_x86_feature_detected!("avx512f") {
        found.push("AVX-512F");
    }
    if std::arch::is_x86_feature_detected!("avx512bf16") {
        found.push("AVX-512-BF16");
    }
    if std::arch::is_x86_feature_detected!("avx2") {
        found.push("AVX2");
    }
    if std::arch::is_x86_feature_detected!("fma") {
        found.push("FMA");
    }
    found
}

#[cfg(target_arch = "aarch64")]
fn vector_extensions() -> Vec<&'static str> {
    let mut found = Vec::new();
    if std::arch::is_aarch64_feature_detected!("sve") {
        found.push("SVE");
    }
    if std::arch::is_aarch64_feature_detected!("neon") {
        found.push("NEON");
    }
    found
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn vector_extensions() -> Vec<&'static str> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_name_is_read_from_cpuinfo_and_the_line_names_the_extensions() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 \
                       64-Core Processor\nflags\t\t: fpu avx2\n\nprocessor\t: 1\nmodel name\t: \
                       other\n";
        assert_eq!(
            model_name(cpuinfo).as_deref(),
            Some("AMD EPYC 7B13 64-Core Processor")
        );
        assert_eq!(model_name("processor\t: 0\n"), None);
        let avx2 = Processor {
            name: "X".into(),
            threads: 2,
            vector: vec!["AVX2", "FMA"],
        };
        let line = avx2.describe();
        assert!(line.starts_with("X, 2 threads, AVX2 FMA"), "{line}");
        assert_eq!(
            line.ends_with("(no AVX-512)"),
            cfg!(target_arch = "x86_64"),
            "{line}"
        );
        let avx512 = Processor {
            vector: vec!["AVX-512F", "AVX2", "FMA"],
            ..avx2
        };
        assert_eq!(avx512.describe(), "X, 2 threads, AVX-512F AVX2 FMA");
        // This machine: what the run-time checks find is what is listed.
        let here = Processor::detect();
        assert!(here.threads >= 1);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            here.vector.contains(&"AVX2"),
            std::arch::is_x86_feature_detected!("avx2")
        );
    }
}

//! The `hayate` command line, as a library so tests can drive it: one module per subcommand in
//! [`cli`]. The work itself lives in `hayate-train`, `hayate-eval` and `hayate-bench`.

pub mod cli;

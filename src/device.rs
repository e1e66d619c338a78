//! `--device cpu|cuda[:N]`.

use anyhow::Result;
use candle_core::Device;

use crate::error::user;

pub fn parse(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| user(format!("--device {spec}: expected cpu, cuda or cuda:N")))?,
        None => {
            return Err(user(format!(
                "--device {spec}: expected cpu, cuda or cuda:N"
            )))
        }
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(user(format!(
            "--device {spec}: this peft was built without CUDA (rebuild with `cargo build --release --features cuda`)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| user(format!("--device {spec}: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(super::parse("CPU").unwrap().is_cpu());
        let err = super::parse("tpu").unwrap_err().to_string();
        assert!(err.contains("tpu"), "{err}");
        assert!(super::parse("cuda:x").is_err());
    }
}

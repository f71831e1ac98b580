//! Run-time backend choice: burn's pure-Rust CPU backend (`Flex`) or CUDA (feature `cuda`).
//!
//! Code that touches tensors is generic over the backend and is entered once through
//! [`dispatch`], which monomorphises it for the backend chosen at start. CUDA is probed by
//! loading `libcuda.so.1` and counting devices first, so a `cuda` build still starts (on the
//! CPU) on a machine without a GPU.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::AutodiffBackend;

/// CPU backend.
pub type Cpu = burn::backend::Flex;
/// CPU backend with autodiff.
pub type CpuTrain = burn::backend::Autodiff<Cpu>;
/// CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;
/// CUDA backend with autodiff.
#[cfg(feature = "cuda")]
pub type CudaTrain = burn::backend::Autodiff<Cuda>;

/// What the user asked for: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("device must be auto, cpu, cuda or cuda:N, got {s:?}")),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The backend actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub enum Resolved {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

impl From<Resolved> for String {
    fn from(d: Resolved) -> String {
        d.to_string()
    }
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolved::Cpu => write!(f, "cpu"),
            #[cfg(feature = "cuda")]
            Resolved::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Picks the backend: `auto` takes CUDA when compiled in and a GPU is present.
    pub fn resolve(self) -> Result<Resolved, String> {
        match self {
            DeviceSpec::Cpu => Ok(Resolved::Cpu),
            DeviceSpec::Auto => {
                #[cfg(feature = "cuda")]
                if cuda_device_count() > 0 {
                    return Ok(Resolved::Cuda(0));
                }
                Ok(Resolved::Cpu)
            }
            DeviceSpec::Cuda(n) => {
                #[cfg(feature = "cuda")]
                {
                    let count = cuda_device_count();
                    if n < count {
                        return Ok(Resolved::Cuda(n));
                    }
                    Err(format!(
                        "cuda:{n} requested but {count} CUDA device(s) found"
                    ))
                }
                #[cfg(not(feature = "cuda"))]
                Err(format!(
                    "cuda:{n} requested but this binary was built without the `cuda` feature"
                ))
            }
        }
    }
}

/// Number of CUDA devices, 0 when the driver library is missing or fails to initialise.
#[cfg(feature = "cuda")]
pub fn cuda_device_count() -> usize {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuCount = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: cuInit and cuDeviceGetCount have these C signatures in every CUDA driver
    // (cuda.h); the library stays loaded for the process lifetime.
    unsafe {
        let Ok(lib) = libloading::Library::new("libcuda.so.1") else {
            return 0;
        };
        let lib = Box::leak(Box::new(lib));
        let (Ok(init), Ok(count)) = (
            lib.get::<CuInit>(b"cuInit\0"),
            lib.get::<CuCount>(b"cuDeviceGetCount\0"),
        ) else {
            return 0;
        };
        if init(0) != 0 {
            return 0;
        }
        let mut n = 0i32;
        if count(&mut n) != 0 {
            return 0;
        }
        n.max(0) as usize
    }
}

/// Work generic over an autodiff backend, run on the backend chosen at run time.
pub trait BackendTask {
    type Output;
    /// Runs on backend `B` (training uses `B`, inference `B::InnerBackend`).
    fn run<B: AutodiffBackend>(self, device: B::Device, resolved: Resolved) -> Self::Output;
}

/// Runs `task` on the resolved backend.
pub fn dispatch<T: BackendTask>(resolved: Resolved, task: T) -> T::Output {
    match resolved {
        Resolved::Cpu => task.run::<CpuTrain>(Default::default(), resolved),
        #[cfg(feature = "cuda")]
        Resolved::Cuda(n) => {
            task.run::<CudaTrain>(burn::backend::cuda::CudaDevice::new(n), resolved)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_device_specs() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("cuda:1".parse(), Ok(DeviceSpec::Cuda(1)));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cpu.resolve(), Ok(Resolved::Cpu));
    }
}

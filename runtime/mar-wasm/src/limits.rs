//! What one app's guests may use, and the memory cap that enforces its part: linear memory
//! summed over every memory of an instance (a component made by componentize-py has several),
//! counted from the first page, so a memory bomb fails its own `memory.grow` and nothing else.

use std::time::Duration;

/// One app's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long one request may run in the guest before it is interrupted (503, H12).
    pub timeout: Duration,
    /// Linear memory an instance may use, summed over its memories, in bytes.
    pub memory: usize,
    /// Requests of this app running in guests at once; more wait for a slot.
    pub concurrency: usize,
    /// Keep a wasi:http instance for the next request instead of a fresh one each time
    /// (faster, but requests then share the guest's state).
    pub reuse: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            memory: 128 << 20,
            concurrency: 16,
            reuse: false,
        }
    }
}

/// Table elements an instance may have, summed: far beyond what real guests use (Python's
/// component has a few thousand), yet a table bomb stops long before it costs memory.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The `ResourceLimiter` of one instance's store.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    max: usize,
    used: usize,
    tables: usize,
    /// Set once a growth was refused, so the request's failure can say why.
    pub(crate) exceeded: bool,
}

impl MemoryCap {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            used: 0,
            tables: 0,
            exceeded: false,
        }
    }

    /// Whether growing one memory from `current` to `desired` bytes keeps the sum under the
    /// cap; if so, counts it.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let max = self.max;
        sum_grows(&mut self.used, max, current, desired, &mut self.exceeded)
    }
}

/// One of an instance's memories (or tables) grows from `current` to `desired`: whether the
/// sum over all of them, `used`, stays within `max`; counted if so, `exceeded` set if not.
fn sum_grows(
    used: &mut usize,
    max: usize,
    current: usize,
    desired: usize,
    exceeded: &mut bool,
) -> bool {
    let after = used.saturating_sub(current).saturating_add(desired);
    if after > max {
        *exceeded = true;
        return false;
    }
    *used = after;
    true
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        Ok(sum_grows(
            &mut self.tables,
            MAX_TABLE_ELEMENTS,
            current,
            desired,
            &mut self.exceeded,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_summed_over_memories() {
        let mut cap = MemoryCap::new(10);
        assert!(cap.grow(0, 4)); // memory A created with 4
        assert!(cap.grow(0, 4)); // memory B created with 4
        assert!(cap.grow(4, 6)); // A grows to 6: 10 in all
        assert!(!cap.exceeded);
        assert!(!cap.grow(4, 5)); // B to 5 would be 11
        assert!(cap.exceeded);
        assert_eq!(cap.used, 10);
    }
}

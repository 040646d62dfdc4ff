/// Keeps a value on its own cache line(s), so atomics written on every request by one group of
/// threads do not slow down reads of unrelated atomics next to them (false sharing). 128 bytes
/// because x86's adjacent-line prefetcher and Apple's M-series both work in 128-byte units.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

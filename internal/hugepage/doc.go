// Package hugepage asks the kernel to back chosen heap buffers with transparent huge
// pages (madvise MADV_HUGEPAGE), so that the memory is faulted in 2 MiB at a time
// instead of 4 KiB. On the VMs Flotilla is measured on a page fault costs 7.5-16 µs
// however little of the page is used: faulting in 256 MiB took 0.8 s in 4 KiB pages
// and 0.02-0.13 s in huge ones, and the page faults of a record cache filling up
// were a fifth of a node's CPU serving 8 replicas.
//
// Invariants:
//   - Advice never changes a buffer's bytes or its mapping: it is a property of the
//     range, which the kernel merges with advised neighbours, and a hint the kernel
//     may ignore (it then falls back to small pages).
//   - A buffer's range is rounded out to whole huge pages. A Go heap span lies
//     inside one 64 MiB-aligned heap arena, so the rounding never leaves the heap's
//     mapping (the advice may reach a neighbouring object's memory, which is then
//     faulted in huge pages too).
//   - Advice is given only where the kernel's transparent huge pages are "madvise"
//     or "always" (with "always" it changes nothing), and never when GODEBUG sets
//     disablethp to anything but 0 (the Go runtime's own opt-out, which an operator
//     uses to keep a process out of huge pages).
package hugepage

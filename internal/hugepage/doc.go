// Package hugepage asks the kernel to back chosen heap buffers with transparent huge
// pages (madvise MADV_HUGEPAGE), so that the memory is faulted in 2 MiB at a time
// instead of 4 KiB. On the VMs Flotilla is measured on a page fault costs 7.5-16 µs
// however little of the page is used: faulting in 256 MiB took 0.8 s in 4 KiB pages
// and 0.02-0.13 s in huge ones, and the page faults of a record cache filling up
// were a fifth of a node's CPU serving 8 replicas.
//
// Invariants:
//   - Advice never changes a buffer's bytes. It is a flag of the range in the
//     process's mapping (the kernel may split a mapping to hold it, and merges
//     advised neighbours), and a hint the kernel may ignore (it then falls back to
//     small pages).
//   - Only Go heap slices are advised, each range rounded out to whole huge pages.
//     The heap is mapped in 64 MiB-aligned arenas, so a range rounded to 2 MiB never
//     leaves the arenas that hold the slice (the advice may reach a neighbouring
//     object's memory, which is then faulted in huge pages too).
//   - Advice is given only where the kernel's transparent huge pages are "madvise":
//     with "always" the heap gets huge pages anyway, and advice would only make its
//     faults wait for memory compaction where the kernel's defrag setting is
//     "madvise" (its default). None is given when the GODEBUG environment variable
//     sets disablethp to anything but 0 (the Go runtime's own opt-out, which an
//     operator uses to keep a process out of huge pages).
//   - Advice is never taken back: memory advised once stays advised when the runtime
//     reuses it for other objects, and the kernel's khugepaged may later collapse a
//     sparsely used advised range into a whole huge page (resident memory the
//     runtime cannot give back in part). Callers advise only large buffers.
package hugepage

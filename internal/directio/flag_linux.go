package directio

import "syscall"

// Flag is the open flag for direct I/O.
const Flag = syscall.O_DIRECT

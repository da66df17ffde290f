//! Empty: the library target exists so that monitor-user can declare a
//! build-dependency on this crate and be rebuilt when the programs change.
#![no_std]

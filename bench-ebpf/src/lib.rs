//! Empty library target: lets `bench` name this crate as a build-dependency
//! so cargo rebuilds the object when its sources change.
#![no_std]

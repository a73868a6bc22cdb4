// The pod sandbox ("pause") binary: no registry is reachable, so the sandbox image
// is built locally from this module.
module tuneforge.dev/localcluster/pause

go 1.26

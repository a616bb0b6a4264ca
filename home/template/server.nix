# tailcache server template: the hub: documents, notes, photos under ~/sync, plus a receive-only
# ~/sync/backups; Tailscale SSH on, routes not accepted. No agent: this machine is the
# cache.
# home.nix imports this file. What the template sets are defaults, which home.nix overrides.
{
  programs.tailcache.template = "server";
  services.bootstrap-services.template = "server";
}

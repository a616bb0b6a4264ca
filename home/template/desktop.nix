# tailcache desktop template: documents, notes and photos (~/Pictures, shared with the server only);
# Tailscale accepts routes and runs Tailscale SSH. The agent reseeds what it fetched.
# home.nix imports this file. What the template sets are defaults, which home.nix overrides.
{
  programs.tailcache.template = "desktop";
  services.bootstrap-services.template = "desktop";
}

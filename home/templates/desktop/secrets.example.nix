# Copy to secrets.nix (git-ignored) and fill in; `tailcache bootstrap-new-machine` writes
# the first three from the server. Nothing here is copied to another machine.
{
  server = "http://build-server:8000";
  cacheUrl = "http://build-server:5000";
  publicKeys = [ "build-server-tailcache-1:REPLACE-WITH-GET-/pubkey" ];
  syncthingDevices = {
    # desktop.id = "XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX";
  };
}

# This machine's secrets.nix, git-ignored: where its build server is, the keys its cache signs
# with (`GET /pubkey`; `tailcache bootstrap-new-machine` fetches them and asks you to confirm)
# and the other machines' Syncthing ids. Nothing here is copied to another machine.
{
  server = "http://build-server:8000";
  cacheUrl = "http://build-server:5000";
  publicKeys = [
    "build-server-tailcache-1:REPLACE-WITH-GET-/pubkey"
  ];
  syncthingDevices = {
    # desktop.id = "XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX";
  };
}

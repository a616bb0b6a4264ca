# NixOS VM test of services.tailcache.server: the server builds a flake from a local git
# repository through its pipeline (started by the build timer's unit, which sends the API token
# from a credential), signs with a key passed by LoadCredential, and a client substitutes the
# built path from it with require-sigs, accepting only the server's key.
# Run: nix build .#checks.x86_64-linux.vm-substitute (needs KVM).
{ pkgs, module }:
let
  inherit (pkgs.stdenv.hostPlatform) system;
  # A flake without inputs (the VMs have no network), built with the sandbox's /bin/sh.
  flakeNix = pkgs.writeText "flake.nix" ''
    {
      outputs = { self }: {
        packages.${system}.default = derivation {
          name = "tailcache-vm-payload";
          system = "${system}";
          builder = "/bin/sh";
          args = [ "-c" "echo built on the tailcache server > $out" ];
        };
      };
    }
  '';
in
pkgs.testers.runNixOSTest {
  name = "tailcache-substitute";

  nodes.server =
    { config, pkgs, ... }:
    {
      imports = [ module ];
      services.tailcache.server = {
        enable = true;
        cache.listen = "${config.networking.primaryIPAddress}:5000";
        api.listen = "127.0.0.1:8000";
        signingKeyFile = "/var/keys/tailcache/secret-key";
        api.tokenFile = "/var/keys/tailcache/api-token";
        openFirewall = true;
        build = {
          repository = "/srv/config";
          attribute = "packages.${system}.default";
          schedule = "*-*-* 03:00:00";
        };
      };
      # The test network has no tailscale0: open the cache port on the test interface too.
      networking.firewall.allowedTCPPorts = [ 5000 ];
      environment.systemPackages = [
        pkgs.git
        pkgs.jq
      ];

      # The test's secrets and repository, made on the machine (never in the store).
      systemd.services.make-test-secrets = {
        wantedBy = [ "multi-user.target" ];
        before = [ "tailcache-server.service" ];
        requiredBy = [ "tailcache-server.service" ];
        path = [
          config.nix.package
          pkgs.git
        ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          install -d -m 0700 /var/keys/tailcache
          nix-store --generate-binary-cache-key vmtest-tailcache-1 \
            /var/keys/tailcache/secret-key /var/keys/tailcache/public-key
          chmod 0600 /var/keys/tailcache/secret-key
          head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > /var/keys/tailcache/api-token
          chmod 0600 /var/keys/tailcache/api-token

          install -d /srv/config
          cp ${flakeNix} /srv/config/flake.nix
          chmod 0644 /srv/config/flake.nix
          git -C /srv/config init -q -b main
          git -C /srv/config add flake.nix
          git -C /srv/config -c user.name=test -c user.email=test@localhost commit -q -m payload
          chown -R tailcache:tailcache /srv/config
        '';
      };
    };

  nodes.client =
    { ... }:
    {
      nix.settings.substituters = pkgs.lib.mkForce [ ];
    };

  testScript = ''
    start_all()
    server.wait_for_unit("tailcache-server.service")
    server.wait_for_open_port(8000)
    server.wait_until_succeeds("curl -sf http://server:5000/nix-cache-info | grep -q StoreDir")

    with subtest("secrets stay out of the store and reach the service as credentials"):
        token = server.succeed("cat /var/keys/tailcache/api-token").strip()
        server.fail(f"grep -rl {token} /etc/systemd/system/tailcache-server.service")
        unit = server.succeed("systemctl cat tailcache-server.service")
        assert "LoadCredential=signing-key:/var/keys/tailcache/secret-key" in unit, unit
        assert "%d/signing-key" in unit, unit
        pubkey = server.succeed("cat /var/keys/tailcache/public-key").strip()
        served = server.succeed("curl -sf http://server:5000/pubkey").strip()
        assert served == pubkey, f"{served} != {pubkey}"

    with subtest("the API refuses a trigger without the token"):
        server.fail("curl -sf -X POST http://127.0.0.1:8000/build/trigger")

    with subtest("the timer's unit triggers a build, which succeeds"):
        server.succeed("systemctl start tailcache-server-trigger.service")
        server.wait_until_succeeds(
            "tailcache status --server http://127.0.0.1:8000 --json"
            " | jq -e '.last_status == \"success\"'",
            timeout=600,
        )
        # The attribute is a fleet of one target; its first generation names the path,
        # which is a GC root registered under the state directory.
        path = server.succeed(
            "curl -sf http://127.0.0.1:8000/hosts"
            " | jq -r '.hosts[0].generations[0].signed.record | fromjson | .out_path'"
        ).strip()
        assert path.startswith("/nix/store/"), path
        rooted = server.succeed("readlink /var/lib/tailcache/gcroots/*/1").strip()
        assert rooted == path, f"{rooted} != {path}"

    client.wait_for_unit("multi-user.target")
    with subtest("a client that trusts another key refuses the path"):
        client.succeed("nix-store --generate-binary-cache-key other-1 /tmp/other.sec /tmp/other.pub")
        client.fail(
            f"nix-store -r {path} --option substituters http://server:5000"
            " --option trusted-public-keys \"$(cat /tmp/other.pub)\" --option require-sigs true"
        )

    with subtest("the client substitutes the path built on the server"):
        client.succeed(
            f"nix-store -r {path} --option substituters http://server:5000"
            f" --option trusted-public-keys '{pubkey}' --option require-sigs true"
        )
        client.succeed(f"grep -q 'built on the tailcache server' {path}")
  '';
}

# Option names declared versus option names used, with builtins only. nixpkgs' `lib` is not
# available in CI, so the modules are evaluated with a small stand-in (`stubLib`) that is just
# enough to walk their `options` trees; the configurations that use them (bootstrap's home.nix,
# the templates, the README's examples) are walked against those trees, and every name under
# the checked namespaces that no module declares is reported, as are values of the wrong basic
# type. tests/nix_modules.rs drives it:
#   import tests/nix/options.nix { modules = [ ./home ]; config = ./home.nix; args = { … }; }
#   → { declared = [ "programs.tailcache.enable" … ]; used = [ … ]; unknown = [ … ]; }
{
  # Module files (or directories with default.nix) whose options are declared.
  modules,
  # A configuration module to check (a path or a value), or null to only list declarations.
  config ? null,
  # Extra arguments the configuration's function asks for (e.g. `tailcache`, `user`).
  args ? { },
  # Namespaces whose names must all be declared.
  namespaces ? [
    [
      "programs"
      "tailcache"
    ]
    [
      "services"
      "bootstrap-services"
    ]
    [
      "services"
      "tailcache"
    ]
  ],
}:
let
  inherit (builtins)
    attrNames
    concatMap
    concatStringsSep
    elem
    functionArgs
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isString
    tryEval
    ;

  unavailable = what: throw "${what} is not available to the option-name check";

  mkType =
    name: extra:
    {
      _type = "option-type";
      inherit name;
    }
    // extra;
  leafType = name: mkType name { };

  stubLib = rec {
    types = {
      bool = leafType "bool";
      str = leafType "str";
      lines = leafType "str";
      int = leafType "int";
      port = leafType "int";
      package = leafType "package";
      path = leafType "path";
      attrs = leafType "attrs";
      anything = leafType "anything";
      ints = {
        unsigned = leafType "int";
        positive = leafType "int";
        between = _: _: leafType "int";
      };
      strMatching = _: leafType "str";
      listOf = t: mkType "listOf" { elem = t; };
      attrsOf = t: mkType "attrsOf" { elem = t; };
      nullOr = t: mkType "nullOr" { elem = t; };
      enum = values: mkType "enum" { inherit values; };
      either = _: _: leafType "anything";
      oneOf = _: leafType "anything";
      submodule = module: mkType "submodule" { inherit module; };
    };
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = description: mkOption {
      type = types.bool;
      default = false;
      inherit description;
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    mkBefore = content: {
      _type = "order";
      inherit content;
    };
    mkAfter = mkBefore;
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    optionalString = c: s: if c then s else "";
    optionalAttrs = c: a: if c then a else { };
    literalExpression = s: s;
    inherit concatStringsSep;
    escapeShellArg = unavailable "lib.escapeShellArg";
    escapeShellArgs = unavailable "lib.escapeShellArgs";
    mapAttrs = builtins.mapAttrs;
  };

  # What a module function gets: its declared arguments, each stubbed.
  moduleArgs =
    f: extra:
    builtins.mapAttrs (
      n: _:
      if n == "lib" then
        stubLib
      else if extra ? ${n} then
        extra.${n}
      else if n == "name" then
        "<name>"
      else
        unavailable n
    ) (functionArgs f);
  callModule =
    m: extra:
    let
      v = if isAttrs m || isFunction m then m else import m;
    in
    if isFunction v then v (moduleArgs v extra) else v;

  # A module's own imports, followed (paths only).
  collect =
    m:
    let
      v = callModule m { };
    in
    [ v ] ++ concatMap collect (v.imports or [ ]);

  isOption = v: isAttrs v && (v._type or null) == "option";

  # Deep merge of option trees (each module declares its own part).
  mergeTrees =
    trees:
    builtins.zipAttrsWith (
      _: vs: if builtins.length vs == 1 || builtins.any isOption vs then builtins.head vs else mergeTrees vs
    ) trees;

  declared = mergeTrees (map (v: v.options or { }) (concatMap collect modules));

  submoduleOptions =
    m:
    (callModule m {
      name = "<name>";
    }).options or { };

  # Dotted names of every declared option.
  declaredNames =
    prefix: tree:
    concatMap (
      n:
      let
        v = tree.${n};
        p = prefix ++ [ n ];
      in
      if isOption v then [ (concatStringsSep "." p) ] ++ typeNames p v.type else declaredNames p v
    ) (attrNames tree);
  typeNames =
    p: t:
    if t.name == "submodule" then
      declaredNames p (submoduleOptions t.module)
    else if t.name == "attrsOf" then
      typeNames (p ++ [ "<name>" ]) t.elem
    else if t.name == "listOf" then
      typeNames (p ++ [ "*" ]) t.elem
    else if t.name == "nullOr" then
      typeNames p t.elem
    else
      [ ];

  # Whether a value can be computed here (values that need `config` or `pkgs` cannot).
  computable = v: (tryEval (builtins.seq v true)).success;

  # Strips mkIf/mkMerge/mkDefault/… down to the definitions they carry.
  definitions =
    v:
    if computable v && isAttrs v && v ? _type then
      (
        if v._type == "if" || v._type == "override" || v._type == "order" then
          definitions v.content
        else if v._type == "merge" then
          concatMap definitions v.contents
        else
          [ v ]
      )
    else
      [ v ];

  # Whether a value is of a basic type; values that cannot be computed here (they need
  # `config` or `pkgs`) count as fine.
  hasType =
    t: v:
    let
      r = tryEval (
        if t.name == "bool" then
          isBool v
        else if t.name == "str" then
          isString v
        else if t.name == "int" then
          isInt v
        else if t.name == "enum" then
          elem v t.values
        else
          true
      );
    in
    !r.success || r.value;

  # [ { name; problem } ] for a value against a declared node.
  check =
    p: node: value:
    concatMap (v: checkOne p node v) (definitions value);
  checkOne =
    p: node: v:
    let
      name = concatStringsSep "." p;
    in
    if isOption node then
      checkType p node.type v
    else if !(computable v) then
      [ ]
    else if !(isAttrs v) then
      [
        {
          inherit name;
          problem = "is a group of options, not a value";
        }
      ]
    else
      concatMap (
        n:
        if node ? ${n} then
          check (p ++ [ n ]) node.${n} v.${n}
        else
          [
            {
              name = concatStringsSep "." (p ++ [ n ]);
              problem = "is not declared";
            }
          ]
      ) (attrNames v);
  checkType =
    p: t: v:
    let
      name = concatStringsSep "." p;
      wrong = [
        {
          inherit name;
          problem =
            if t.name == "enum" then "is not one of ${builtins.toJSON t.values}" else "is not a ${t.name}";
        }
      ];
    in
    if !(computable v) then
      [ ]
    else if t.name == "submodule" then
      (if isAttrs v then check p (submoduleOptions t.module) v else wrong)
    else if t.name == "attrsOf" then
      (
        if isAttrs v then
          concatMap (n: concatMap (d: checkType (p ++ [ n ]) t.elem d) (definitions v.${n})) (attrNames v)
        else
          wrong
      )
    else if t.name == "listOf" then
      (
        let
          r = tryEval (isList v);
        in
        if !r.success then
          [ ]
        else if r.value then
          concatMap (e: checkType (p ++ [ "*" ]) t.elem e) v
        else
          wrong
      )
    else if t.name == "nullOr" then
      (if v == null then [ ] else checkType p t.elem v)
    else if hasType t v then
      [ ]
    else
      wrong;

  # Dotted names of the leaves a configuration sets (for the report); an empty set is a leaf
  # (an attrsOf option set to nothing).
  usedNames =
    prefix: v:
    concatMap (
      d:
      if computable d && isAttrs d && !(d ? _type) && d != { } then
        concatMap (n: usedNames (prefix ++ [ n ]) d.${n}) (attrNames d)
      else
        [ (concatStringsSep "." prefix) ]
    ) (definitions v);

  cfgValue =
    if config == null then
      { }
    else
      let
        v = callModule config args;
      in
      if v ? config && (v ? options || v ? imports) then v.config else v;

  # The part of the configuration under a namespace, through mkIf/mkMerge at any level.
  under =
    path: v:
    if path == [ ] then
      definitions v
    else
      concatMap (
        d: if isAttrs d && d ? ${builtins.head path} then under (builtins.tail path) d.${builtins.head path} else [ ]
      ) (definitions v);

  declaredAt =
    path: tree:
    if path == [ ] then
      tree
    else
      let
        h = builtins.head path;
      in
      if tree ? ${h} then declaredAt (builtins.tail path) tree.${h} else { };

  perNamespace = map (
    ns:
    let
      values = under ns cfgValue;
    in
    {
      unknown = concatMap (v: check ns (declaredAt ns declared) v) values;
      used = concatMap (usedNames ns) values;
    }
  ) namespaces;
in
{
  declared = declaredNames [ ] declared;
  used = concatMap (r: r.used) perNamespace;
  unknown = map (u: "${u.name} ${u.problem}") (concatMap (r: r.unknown) perNamespace);
}

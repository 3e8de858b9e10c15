// A real OpenID Connect provider for crates/kiln-cli/tests/sso.rs.
//
// Usage: node provider.mjs REDIRECT_URI [PORT]
// Listens on PORT (default: a free port) of 127.0.0.1 and prints `issuer http://127.0.0.1:PORT`
// once it answers. One confidential client (`kiln`, secret below) may use
// REDIRECT_URI; the dev interactions (plain HTML forms) sign in any of the
// accounts below by name, with any password.
import http from 'node:http';
import Provider from 'oidc-provider';

const redirectUri = process.argv[2];
if (!redirectUri) {
  console.error('usage: node provider.mjs REDIRECT_URI');
  process.exit(2);
}

// Test users: the `sub`, profile and group claims each signs in with.
const accounts = {
  ada: { email: 'ada@example.test', groups: ['kiln-devs'] },
  grace: { email: 'grace@example.test', groups: ['kiln-admins', 'kiln-devs'] },
  linus: { email: 'linus@example.test', groups: 'kiln-viewers' },
  mallory: { email: 'mallory@example.test', groups: ['outsiders'] },
};

const server = http.createServer();
server.listen(Number(process.argv[3] ?? 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'kiln',
        client_secret: 'kiln-test-client-secret',
        redirect_uris: [redirectUri],
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    async findAccount(ctx, sub) {
      const account = accounts[sub];
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub: `subject-${sub}`,
            email: account.email,
            email_verified: true,
            preferred_username: sub,
            groups: account.groups,
          };
        },
      };
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['preferred_username', 'groups'],
      groups: ['groups'],
    },
    // The claims of the requested scopes go into the ID token itself: kiln
    // reads nothing from the userinfo endpoint.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: true } },
    pkce: { required: () => true },
    cookies: { keys: ['kiln-sso-test-cookies-only'] },
  });
  server.on('request', provider.callback());
  console.log(`issuer ${issuer}`);
});

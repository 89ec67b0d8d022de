# Gatehouse: build the TypeScript, then run the compiled server on Node 24 (an LTS line; 22 is
# supported too) as an unprivileged user. The image also holds the one-shot commands:
#   node dist/src/cli/admin.js create --email you@example.com   (the first admin; see docker-compose.yml)
#   node dist/src/cli/migrate.js, node dist/src/cli/keys.js <init|rotate|list|prune>
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src src
COPY plugins plugins
COPY routes routes
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
ENV NODE_ENV=production HOST=0.0.0.0 PORT=3000
WORKDIR /app
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/dist dist
COPY package.json ./
COPY sql sql
# The key set volume (docker-compose.yml) must be writable by the server's user.
RUN mkdir -p /var/lib/gatehouse/keys && chown node:node /var/lib/gatehouse/keys && chmod 700 /var/lib/gatehouse/keys
USER node
EXPOSE 3000
# Asks the port the server listens on: PORT from the container's environment (3000 by default).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/api/health/ready').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "dist/src/server.js"]

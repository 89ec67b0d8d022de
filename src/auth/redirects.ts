import { publicUrl, type Config } from '../config.js'

/*
 * Where a sign-in may send the browser: FRONTEND_URL (default PUBLIC_URL) and the origins of
 * ALLOWED_REDIRECTS. A relative path is taken relative to FRONTEND_URL. Anything else —
 * another origin, `//evil.com`, `https://app.example.com.evil.com`, `javascript:` — falls
 * back to FRONTEND_URL rather than failing the sign-in.
 */
export function redirectPolicy (config: Config): (candidate: string | undefined) => string {
  const frontend = new URL(config.FRONTEND_URL ?? publicUrl(config)).toString()
  const allowed = new Set([new URL(frontend).origin, ...config.ALLOWED_REDIRECTS])
  return candidate => {
    if (candidate === undefined || candidate === '') return frontend
    // Backslashes and control characters are how browsers and parsers come to disagree.
    // eslint-disable-next-line no-control-regex -- control characters are what it refuses
    if (/[\\\u0000-\u001f\u007f]/.test(candidate)) return frontend
    let target: URL
    try {
      target = candidate.startsWith('/') && !candidate.startsWith('//') ? new URL(candidate, frontend) : new URL(candidate)
    } catch {
      return frontend
    }
    if ((target.protocol !== 'https:' && target.protocol !== 'http:') || target.username !== '' || target.password !== '') return frontend
    return allowed.has(target.origin) ? target.toString() : frontend
  }
}

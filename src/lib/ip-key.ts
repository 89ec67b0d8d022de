import { isIPv4, isIPv6 } from 'node:net'

/*
 * The one key under which every per-IP limit counts a client (SPEC decision 12). An IPv6
 * client is handed a whole prefix — a /64 at least — and may use any address in it, a new one
 * for every request if it likes: counted per address, it would never meet a limit. So IPv6
 * addresses count per prefix (RATE_LIMIT_IPV6_PREFIX, /64 by default); IPv4 addresses, and
 * IPv4 addresses written as IPv6 (::ffff:a.b.c.d), count per address.
 */

/** `2001:db8:1:2:a:b:c:d` → `2001:db8:1:2::/64`; `::ffff:192.0.2.1` → `192.0.2.1`; IPv4 as it is. */
export function ipKey (ip: string, ipv6Prefix: number): string {
  if (isIPv4(ip)) return ip
  // A link-local address may carry its interface (fe80::1%eth0): the same client on any.
  const address = ip.includes('%') ? ip.slice(0, ip.indexOf('%')) : ip
  if (!isIPv6(address)) return ip
  const groups = ipv6Groups(address)
  if (groups.slice(0, 5).every(group => group === 0) && groups[5] === 0xffff) {
    return `${groups[6]! >> 8}.${groups[6]! & 0xff}.${groups[7]! >> 8}.${groups[7]! & 0xff}`
  }
  const prefix = Math.min(128, Math.max(0, Math.trunc(ipv6Prefix)))
  const masked = groups.map((group, index) => {
    const bits = Math.min(16, Math.max(0, prefix - index * 16))
    return group & (0xffff << (16 - bits)) & 0xffff
  })
  return prefix === 128 ? compressed(masked) : `${compressed(masked)}/${prefix}`
}

/** The eight 16-bit groups of a valid IPv6 address (`::` expanded, an IPv4 tail converted). */
function ipv6Groups (address: string): number[] {
  let text = address.toLowerCase()
  const ipv4Tail = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text)
  if (ipv4Tail !== null) {
    const [a, b, c, d] = ipv4Tail.slice(1).map(Number) as [number, number, number, number]
    text = `${text.slice(0, ipv4Tail.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const parse = (part: string): number[] => part === '' ? [] : part.split(':').map(group => Number.parseInt(group, 16))
  const gap = text.indexOf('::')
  if (gap === -1) return parse(text)
  const head = parse(text.slice(0, gap))
  const tail = parse(text.slice(gap + 2))
  return [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail]
}

/** RFC 5952's text form: lower case, the longest run of two or more zero groups as `::`. */
function compressed (groups: number[]): string {
  let start = -1
  let length = 0
  for (let index = 0; index < groups.length;) {
    if (groups[index] !== 0) {
      index++
      continue
    }
    let end = index
    while (end < groups.length && groups[end] === 0) end++
    if (end - index > length) {
      start = index
      length = end - index
    }
    index = end
  }
  const hex = groups.map(group => group.toString(16))
  if (length < 2) return hex.join(':')
  return `${hex.slice(0, start).join(':')}::${hex.slice(start + length).join(':')}`
}

import tomllib, email, os, sys, collections
from email import policy
base = os.path.dirname(os.path.abspath(__file__))
d = tomllib.load(open(os.path.join(base, 'snippets.toml'), 'rb'))
ids = set(); ns = nk = 0; bylang = collections.Counter(); seclang = collections.Counter(); kinds = collections.Counter()
bad = 0
for s in d['snippet']:
    t = s['text']
    assert s['id'] not in ids, s['id']; ids.add(s['id'])
    assert s['lang'] in ('fr', 'en') and s['where'] in ('body', 'subject')
    if s['where'] == 'subject': assert '\n' not in t, s['id']
    if not s['secrets']: assert s['keep'], s['id']
    for x in s['secrets']:
        c = t.count(x['value'])
        if c != 1: print('SECRET count', c, s['id'], x['value'][:40]); bad += 1
        kinds[x['kind']] += 1
        for k in s['keep']:
            if k in x['value'] or x['value'] in k: print('OVERLAP', s['id'], k[:30]); bad += 1
    for k in s['keep']:
        if k not in t: print('KEEP missing', s['id'], k[:40]); bad += 1
    ns += len(s['secrets']); nk += len(s['keep']); bylang[s['lang']] += 1; seclang[s['lang']] += len(s['secrets'])
print('snippets', len(d['snippet']), 'secrets', ns, 'keep', nk, 'by lang', dict(bylang), 'secrets by lang', dict(seclang), dict(kinds),
      'subjects', sum(1 for s in d['snippet'] if s['where']=='subject'), 'no-secret', sum(1 for s in d['snippet'] if not s['secrets']))
# messages
mdir = os.path.join(base, 'messages')
mp = os.path.join(mdir, 'manifest.toml')
if os.path.exists(mp):
    m = tomllib.load(open(mp, 'rb'))
    files = sorted(f for f in os.listdir(mdir) if f.endswith('.eml'))
    listed = [x['file'] for x in m['message']]
    assert sorted(listed) == files and len(set(listed)) == len(listed), (listed, files)
    ms = mk = 0
    for x in m['message']:
        msg = email.message_from_binary_file(open(os.path.join(mdir, x['file']), 'rb'), policy=policy.default)
        texts = [str(msg['Subject'] or '')]
        def walk(part):
            for p in part.walk():
                if p.is_multipart(): continue
                if p.get_content_type() == 'message/rfc822': continue
                try:
                    c = p.get_content()
                except Exception as e:
                    c = p.get_payload(decode=True)
                if isinstance(c, bytes):
                    cs = p.get_content_charset() or 'utf-8'
                    try: c = c.decode(cs)
                    except Exception: c = c.decode('latin-1')
                if isinstance(c, str): texts.append(c)
                elif isinstance(c, email.message.Message):
                    texts.append(str(c['Subject'] or '')); walk(c)
        walk(msg)
        for p in msg.walk():
            if p.get_content_type() == 'message/rfc822':
                for sub in p.get_payload():
                    texts.append(str(sub['Subject'] or '')); walk(sub)
        for s in x['secrets']:
            if not any(s['value'] in t for t in texts): print('MSG secret missing', x['file'], s['value'][:40]); bad += 1
        for k in x['keep']:
            if not any(k in t for t in texts): print('MSG keep missing', x['file'], k[:40]); bad += 1
        ms += len(x['secrets']); mk += len(x['keep'])
    print('messages', len(m['message']), 'secrets', ms, 'keep', mk, 'langs', collections.Counter(x.get('lang','?') for x in m['message']))
    print('TOTAL secrets', ns + ms, 'keep', nk + mk)
print('problems', bad)

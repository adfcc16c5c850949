import tomllib, sys, os, email
from email import policy
D=os.path.dirname(os.path.abspath(__file__))
err=0
d=tomllib.load(open(os.path.join(D,'snippets.toml'),'rb'))
ids=set(); ns=nk=0; lang={}
for sn in d['snippet']:
    i=sn['id']
    if i in ids: print('dup id',i); err+=1
    ids.add(i)
    t=sn['text']
    lang[sn['lang']]=lang.get(sn['lang'],0)+1
    assert sn['where'] in ('body','subject')
    if sn['where']=='subject' and '\n' in t.strip('\n'): print('multiline subject',i); err+=1
    for s in sn['secrets']:
        assert s['kind'] in ('password','private-key','api-token','url-credentials','connection-string'),i
        c=t.count(s['value'])
        if c!=1: print('secret count',c,i,s['value'][:40]); err+=1
        ns+=1
    for k in sn['keep']:
        if k not in t: print('keep missing',i,k[:50]); err+=1
        for s in sn['secrets']:
            if k in s['value'] or s['value'] in k: print('keep/secret overlap',i,k[:30]); 
        nk+=1
    if not sn['secrets'] and not sn['keep']: print('empty',i); err+=1
print('snippets',len(d['snippet']),'secrets',ns,'keep',nk,'lang',lang,
      'nosecret',sum(1 for s in d['snippet'] if not s['secrets']))
mp=os.path.join(D,'messages','manifest.toml')
if os.path.exists(mp):
    m=tomllib.load(open(mp,'rb'))
    files=sorted(f for f in os.listdir(os.path.join(D,'messages')) if f.endswith('.eml'))
    listed=[x['file'] for x in m['message']]
    if sorted(listed)!=files or len(set(listed))!=len(listed): print('manifest/files mismatch',listed,files); err+=1
    ms=mk=0; ml={}
    for x in m['message']:
        raw=open(os.path.join(D,'messages',x['file']),'rb').read()
        msg=email.message_from_bytes(raw,policy=policy.default)
        texts=[str(msg['subject'] or '')]
        for part in msg.walk():
            if part.is_multipart(): continue
            try: texts.append(part.get_content() if part.get_content_maintype()=='text' else part.get_payload(decode=True).decode('utf-8','replace'))
            except Exception as e:
                texts.append(part.get_payload(decode=True).decode(part.get_content_charset() or 'latin-1','replace'))
        for s in x['secrets']:
            if not any(s['value'] in tt for tt in texts): print('msg secret missing',x['file'],s['value'][:40]); err+=1
            ms+=1
        for k in x['keep']:
            if not any(k in tt for tt in texts): print('msg keep missing',x['file'],k[:40]); err+=1
            mk+=1
        l=x.get('lang','?'); ml[l]=ml.get(l,0)+1
    print('messages',len(m['message']),'secrets',ms,'keep',mk,'lang',ml)
print('ERRORS',err)

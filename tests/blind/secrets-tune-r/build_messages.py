# Wraps hand-written texts into MIME. Texts are written one by one below.
import base64, os, zlib, struct, quopri
from email.message import EmailMessage
from email.headerregistry import Address
from email import policy
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.image import MIMEImage
from email.mime.application import MIMEApplication
from email.header import Header
from email.charset import Charset, QP, BASE64
OUT = "/work/main/tests/blind/secrets-tune-r/messages"

def png():
    raw = b"".join(b"\x00" + bytes([200, 230, 200] * 8) for _ in range(8))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"

def qp_text(text, charset="utf-8"):
    cs = Charset(charset); cs.body_encoding = QP
    return MIMEText(text, "plain", cs)
def qp_html(html, charset="utf-8"):
    cs = Charset(charset); cs.body_encoding = QP
    return MIMEText(html, "html", cs)
def b64_text(text, sub="plain", charset="utf-8"):
    cs = Charset(charset); cs.body_encoding = BASE64
    return MIMEText(text, sub, cs)

def hdr(m, received, mid, date, frm, to, subject, cc=None, extra=()):
    m["Received"] = received
    m["Message-ID"] = mid
    m["Date"] = date
    m["From"] = frm
    m["To"] = to
    if cc: m["Cc"] = cc
    m["Subject"] = subject
    if "MIME-Version" not in m: m["MIME-Version"] = "1.0"
    for k, v in extra: m[k] = v
    # move content headers after the others for a natural look
    for k in ("Content-Type", "Content-Transfer-Encoding", "MIME-Version"):
        vals = m.get_all(k)
        if vals:
            del m[k]
            for v in vals: m[k] = v
    return m

def write(name, m):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(m.as_bytes(policy=policy.compat32.clone(linesep="\n", max_line_length=200)) if not isinstance(m, bytes) else m)

# ---------------------------------------------------------------- 001
t1 = """Bonjour Alice,

Comme demandé, voici le tableau des comptes des nouveaux agents qui arrivent le
1er mars. J'ai mis des mots de passe provisoires, ils les changeront.

Nom             Service        Identifiant     Mot de passe
Lucas Bertin    Urbanisme      l.bertin        Glycine!Parvis7
Inès Moulin     État civil     i.moulin        Registre-Ocre-52
Paul Sorel      Services tech. p.sorel         (déjà créé par Bob)

Merci de créer les boîtes et les accès Nextcloud.

Bien cordialement,

Sylvie Moreau
Secrétariat général — Mairie d'Exemple
03 84 52 17 40
"""
h1 = """<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"></head>
<body style="font-family:Calibri,sans-serif;font-size:11pt">
<p>Bonjour Alice,</p>
<p>Comme demandé, voici le tableau des comptes des nouveaux agents qui arrivent le 1er mars. J'ai mis des mots de passe provisoires, ils les changeront.</p>
<table border="1" cellspacing="0" cellpadding="4" style="border-collapse:collapse">
<tr style="background:#dde4ee"><th>Nom</th><th>Service</th><th>Identifiant</th><th>Mot de passe</th></tr>
<tr><td>Lucas Bertin</td><td>Urbanisme</td><td>l.bertin</td><td>Glycine!Parvis7</td></tr>
<tr><td>Inès Moulin</td><td>État civil</td><td>i.moulin</td><td>Registre-Ocre-52</td></tr>
<tr><td>Paul Sorel</td><td>Services tech.</td><td>p.sorel</td><td><i>(déjà créé par Bob)</i></td></tr>
</table>
<p>Merci de créer les boîtes et les accès Nextcloud.</p>
<p>Bien cordialement,</p>
<p><b>Sylvie Moreau</b><br>Secrétariat général — Mairie d'Exemple<br>03 84 52 17 40</p>
</body></html>
"""
m = MIMEMultipart("alternative")
m.attach(qp_text(t1)); m.attach(qp_html(h1))
hdr(m, "from mail.mairie-exemple.fr (mail.mairie-exemple.fr [198.51.100.20])\n\tby mx1.example.org (Postfix) with ESMTPS id 4Z9kQm1RtXz\n\tfor <alice@example.org>; Tue, 17 Feb 2026 09:12:44 +0100 (CET)",
    "<AM0PR09MB4821A7E3C2D1F0B9C8E4A1D2B3C4@AM0PR09MB4821.eurprd09.prod.outlook.example>",
    "Tue, 17 Feb 2026 09:12:40 +0100", "=?utf-8?Q?Sylvie_Moreau?= <s.moreau@mairie-exemple.fr>", "Alice <alice@example.org>",
    Header("Comptes des nouveaux agents – arrivée du 1er mars", "utf-8").encode(),
    extra=[("X-Mailer", "Microsoft Outlook 16.0"), ("Content-Language", "fr-FR")])
write("001-fr-tableau-html-comptes-mairie.eml", m)

# ---------------------------------------------------------------- 002
t2 = """Hi Bob,

Attached is the .env we use on the old VPS, so you can set up the new one the same way.
I removed the Stripe bits since Emma already has those. Ping me if anything's missing,
I'm around until 6pm UK time.

Cheers,
Oliver Grant
CTO, Greenhouse
"""
env2 = """# greenhouse api - production
NODE_ENV=production
PORT=3000
DATABASE_URL=postgres://gh_api:Heron-Slate-2207@10.0.4.20:5432/greenhouse
REDIS_URL=redis://10.0.4.21:6379/2
JWT_SECRET=Vq8mZ2xR7kLp4TwN9cYb3HJd5sF1gE6aU0iO2pKlMnB4vC9x
MAILJET_API_KEY=4f9e2b7c1d8a3e6f5b0c9d2a7e4f1b83
MAILJET_SECRET_KEY=c1d8a3e6f5b0c9d2a7e4f1b834f9e2b7
LOG_LEVEL=info
BUILD_SHA=66dc6616bc54b510f888220dd49d9f87d131adf0
"""
m = MIMEMultipart("mixed")
m.attach(MIMEText(t2, "plain", "us-ascii"))
a = MIMEApplication(env2.encode(), "octet-stream"); a.add_header("Content-Disposition", "attachment", filename="production.env")
m.attach(a)
hdr(m, "from mail-ed1-f41.google.example (mail-ed1-f41.google.example [203.0.113.41])\n\tby mx1.example.org (Postfix) with ESMTPS id 4Z9mR2sLqWx\n\tfor <bob@example.org>; Wed, 04 Feb 2026 15:03:10 +0000 (UTC)",
    "<CAK7v2Zq9mR1x8LpT4wN3cYb5HJd=oL7wE3rT6yU8iPaS4dF@mail.gmail.example>",
    "Wed, 4 Feb 2026 15:03:02 +0000", "Oliver Grant <oliver@greenhouse.example.com>", "Bob <bob@example.org>",
    "env file for the new VPS", cc="Emma <emma@example.org>")
write("002-en-env-attachment.eml", m)

# ---------------------------------------------------------------- 003  (raw, encoded subject with the password)
subj3 = Header("Accès wifi bénévoles : clé = Marée-Haute-1903", "iso-8859-1").encode()
raw3 = f"""Received: from smtp.free.example (smtp.free.example [192.0.2.15])
	by mx1.example.org (Postfix) with ESMTP id 4Z9nS3tMrXy
	for <contact@example.org>; Sat, 07 Feb 2026 18:41:22 +0100 (CET)
Message-ID: <8e1b3f2a-6c4d-4f7e-9a1b-2c3d4e5f6a7b@free.example>
Date: Sat, 7 Feb 2026 18:41:19 +0100
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Language: fr
From: Yvonne Lemaire <yvonne.lemaire@free.example>
To: contact@example.org
Subject: {subj3}
Content-Type: text/plain; charset=ISO-8859-1; format=flowed
Content-Transfer-Encoding: 8bit

Bonsoir,

Tout est dans l'objet : c'est la nouvelle clé du wifi de la salle des 
bénévoles du théâtre. Le réseau s'appelle TDP-Benevoles. Pouvez-vous la 
mettre sur la borne ? L'ancienne circule beaucoup trop.

Merci et bon week-end,
Yvonne, coordinatrice bénévoles

""".replace("\n", "\r\n").encode("iso-8859-1")
write("003-fr-sujet-encode-cle-wifi.eml", raw3)

# ---------------------------------------------------------------- 004  (wrong declared charset: says us-ascii, bytes are windows-1252)
body4 = """Bonjour Monsieur,

Suite à notre conversation téléphonique, je vous communique les accès de l'espace
client de notre fournisseur d'énergie pour que vous puissiez télécharger les
relevés de consommation du bâtiment :
   identifiant : CCAS-0719338
   mot de passe : Radiateur42Pompe
Le numéro de contrat est le 4401 227 981.

Je reste à votre disposition.
Françoise Delmas
Responsable administrative – CCAS
"""
raw4 = ("""Received: from relay.ccas-exemple.fr (relay.ccas-exemple.fr [198.51.100.33])
	by mx1.example.org (Postfix) with ESMTP id 4Z9pT4uNsYz
	for <bob@example.org>; Mon, 12 Jan 2026 11:20:05 +0100 (CET)
Message-ID: <000a01dc83b2$5e4f1c20$1aed5460$@ccas-exemple.fr>
Date: Mon, 12 Jan 2026 11:20:01 +0100
From: =?iso-8859-1?Q?Fran=E7oise_Delmas?= <f.delmas@ccas-exemple.fr>
To: <bob@example.org>
Subject: =?iso-8859-1?Q?Acc=E8s_espace_client_=E9nergie?=
MIME-Version: 1.0
X-Mailer: Microsoft Outlook 14.0
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: 8bit

""".replace("\n", "\r\n").encode("ascii") + body4.replace("\n", "\r\n").encode("cp1252"))
write("004-fr-charset-faux-espace-client.eml", raw4)

# ---------------------------------------------------------------- 005  (alternative + related, secret in both parts, inline image)
t5 = """Hi Alice,

Here are the Wi-Fi details for the pop-up office next week, as you asked:

Network: GH-Popup
Password: Fennel*Canopy*88

The router admin page (http://192.168.8.1) uses the sticker password, which is
printed on the back, I didn't change it. Photo of the sticker attached in case.

Thanks!
Nora Fitzgerald | Office Manager | Greenhouse
"""
h5 = """<div dir="ltr"><div>Hi Alice,</div><div><br></div><div>Here are the Wi-Fi details for the pop-up office next week, as you asked:</div><div><br></div>
<div>Network: <b>GH-Popup</b></div><div>Password: <b><span style="font-family:monospace">Fennel*Canopy*88</span></b></div><div><br></div>
<div>The router admin page (<a href="http://192.168.8.1">http://192.168.8.1</a>) uses the sticker password, which is printed on the back, I didn&#39;t change it. Photo of the sticker attached in case.</div>
<div><img src="cid:ii_m6sticker01" alt="sticker.png" width="240"><br></div><div>Thanks!</div>
<div>Nora Fitzgerald | Office Manager | Greenhouse</div></div>
"""
alt = MIMEMultipart("alternative")
alt.attach(MIMEText(t5, "plain", "utf-8")); alt.attach(b64_text(h5, "html"))
rel = MIMEMultipart("related"); rel.attach(alt)
img = MIMEImage(png(), "png"); img.add_header("Content-ID", "<ii_m6sticker01>"); img.add_header("Content-Disposition", "inline", filename="sticker.png"); img.add_header("X-Attachment-Id", "ii_m6sticker01")
rel.attach(img)
hdr(rel, "from mail-wr1-f54.google.example (mail-wr1-f54.google.example [203.0.113.54])\n\tby mx1.example.org (Postfix) with ESMTPS id 4Z9qU5vOtZa\n\tfor <alice@example.org>; Thu, 22 Jan 2026 10:47:31 +0000 (UTC)",
    "<CAJx3Lp7QkZ2mR8vT4wN9cYb3HJd5sF1gE6aU0iO2pKl_Mn@mail.gmail.example>",
    "Thu, 22 Jan 2026 10:47:19 +0000", "Nora Fitzgerald <nora@greenhouse.example.com>", "alice@example.org",
    "Wi-Fi for the pop-up office")
write("005-en-wifi-popup-inline-image.eml", rel)

# ---------------------------------------------------------------- 006  (forwarded message as attachment)
inner = MIMEText("""Bonjour,

Votre compte sur le portail des subventions a bien été créé.

Identifiant : asso-velo-0451
Mot de passe initial : Rayon&Moyeu-3312

Pour des raisons de sécurité, modifiez ce mot de passe dès votre première
connexion sur https://subventions.departement.example/connexion

Dossier n° SUB-2026-00871

Le service des relations avec les associations
""", "plain", "utf-8")
hdr(inner, "from mta.departement.example (mta.departement.example [192.0.2.80])\n\tby mx.webmail.example; Tue, 13 Jan 2026 14:02:11 +0100",
    "<20260113140211.51C2A3F0@mta.departement.example>", "Tue, 13 Jan 2026 14:02:11 +0100",
    "Portail Subventions <ne-pas-repondre@departement.example>", "jean.dupont@webmail.example",
    Header("Création de votre compte", "utf-8").encode())
outer = MIMEMultipart("mixed")
outer.attach(MIMEText("""Bonjour Chloé,

Je vous fais suivre le mail du Département, c'est pour le dossier de subvention
dont on a parlé à l'AG. Est-ce que vous pourriez m'aider à remplir la partie
« moyens informatiques » ? Je ne sais pas quoi mettre pour le devis.

Amicalement,
Jean Dupont
Trésorier — asso vélo
""", "plain", "utf-8"))
att = MIMEMessage(inner); att.add_header("Content-Disposition", "attachment", filename="Création de votre compte.eml")
outer.attach(att)
hdr(outer, "from smtp.webmail.example (smtp.webmail.example [192.0.2.90])\n\tby mx1.example.org (Postfix) with ESMTPS id 4Z9rV6wPuAb\n\tfor <commercial@example.org>; Wed, 14 Jan 2026 20:15:48 +0100 (CET)",
    "<b7c1e2f3-0a9d-4c8b-8e7f-6a5b4c3d2e1f@webmail.example>", "Wed, 14 Jan 2026 20:15:44 +0100",
    "Jean Dupont <jean.dupont@webmail.example>", "commercial@example.org",
    "Fwd: " + Header("Création de votre compte", "utf-8").encode(),
    extra=[("User-Agent", "Roundcube Webmail/1.6.9")])
write("006-fr-transfert-piece-jointe-subventions.eml", outer)

# ---------------------------------------------------------------- 007  (Apple Mail QP, soft line break inside the password)
raw7 = """Received: from smtp.orange.example (smtp.orange.example [192.0.2.120])
	by mx1.example.org (Postfix) with ESMTPS id 4Z9sW7xQvBc
	for <alice@example.org>; Fri, 30 Jan 2026 07:58:02 +0100 (CET)
Content-Type: text/plain;
	charset=utf-8
Content-Transfer-Encoding: quoted-printable
Mime-Version: 1.0 (1.0)
Subject: =?utf-8?Q?Re=3A_=5Bexample_=235260=5D_Messagerie_de_l=E2=80=99=C3=A9cole?=
From: Claire Vasseur <claire.vasseur@orange.example>
Date: Fri, 30 Jan 2026 07:57:55 +0100
Message-Id: <4F2A9C1B-7E3D-4B8A-9C6F-1D2E3F4A5B6C@orange.example>
To: Alice <alice@example.org>
X-Mailer: iPhone Mail (22C152)

Bonjour Alice, j=E2=80=99ai enfin retrouv=C3=A9 le papier : le mot de passe de=
 la bo=C3=AEte direction@ecole-des-pins.fr que la mairie m=E2=80=99avait donn=
=C3=A9 c=E2=80=99est Mimosa_Preau_20=
26 (avec le tiret du bas). Je l=E2=80=99ai tap=C3=A9 sur l=E2=80=99iPad mais =
il me dit toujours erreur.

Claire

Envoy=C3=A9 de mon iPhone

> Le 29 janv. 2026 =C3=A0 17:12, Alice <alice@example.org> a =C3=A9crit=C2=
=A0:
>=20
> =EF=BB=BFBonjour Madame Vasseur,
> Pouvez-vous me confirmer le mot de passe que vous utilisez ? Je n=E2=80=99=
ai pas acc=C3=A8s =C3=A0 l=E2=80=99ancien.
> Alice
""".replace("\n", "\r\n").encode("ascii")
write("007-fr-iphone-qp-coupure.eml", raw7)

# ---------------------------------------------------------------- 008  (English, HTML only, Outlook, password in a styled cell; decoys)
h8 = """<html xmlns:o="urn:schemas-microsoft-com:office:office"><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252">
<style><!-- p.MsoNormal {margin:0cm;font-size:11.0pt;font-family:"Calibri",sans-serif;} --></style></head>
<body lang="EN-GB"><div class="WordSection1">
<p class="MsoNormal">Dear Example Coop team,</p><p class="MsoNormal">&nbsp;</p>
<p class="MsoNormal">As agreed on the call, please find below the access for the translation platform we are lending to the theatre for the festival:</p>
<table class="MsoTableGrid" border="1" cellspacing="0" cellpadding="0">
<tr><td><p class="MsoNormal"><b>Portal</b></p></td><td><p class="MsoNormal">https://portal.subtitle-partner.example</p></td></tr>
<tr><td><p class="MsoNormal"><b>User</b></p></td><td><p class="MsoNormal">theatre.port.guest</p></td></tr>
<tr><td><p class="MsoNormal"><b>Password</b></p></td><td><p class="MsoNormal"><span style="color:#C00000">Surtitle#Harbour56</span></p></td></tr>
<tr><td><p class="MsoNormal"><b>Contract</b></p></td><td><p class="MsoNormal">SP-EU-2026-0318</p></td></tr>
</table>
<p class="MsoNormal">&nbsp;</p><p class="MsoNormal">Kind regards,</p>
<p class="MsoNormal">Annelies de Vries<br>Partnerships &#8211; SubtitlePartner B.V.<br>+31 20 555 0147</p>
<p class="MsoNormal"><span style="font-size:8pt;color:gray">This e-mail and any attachments are confidential and intended solely for the addressee.</span></p>
</div></body></html>
"""
m = qp_html(h8, "windows-1252")
hdr(m, "from EUR05-AM6-obe.outbound.protection.outlook.example (EUR05-AM6-obe.outbound.protection.outlook.example [203.0.113.140])\n\tby mx1.example.org (Postfix) with ESMTPS id 4Z9tX8yRwCd\n\tfor <contact@example.org>; Mon, 09 Feb 2026 13:30:17 +0000 (UTC)",
    "<DB9PR03MB7314C2A1E4F5B6D7A8C9B0E1F2A3@DB9PR03MB7314.eurprd03.prod.outlook.example>",
    "Mon, 9 Feb 2026 13:30:12 +0000", "Annelies de Vries <a.devries@subtitle-partner.example>", "contact@example.org",
    "Surtitling platform access for Theatre du Port", cc="sophie.bernard@free.example",
    extra=[("X-Mailer", "Microsoft Outlook 16.0"), ("Thread-Index", "AdtH5kQ2mZ9xLpT4wN3cYb5HJd1sF6gE0aU8")])
write("008-en-html-only-surtitrage.eml", m)

# ---------------------------------------------------------------- 009  (base64 text part + PDF attachment)
t9 = """Bonjour,

Pour l'audit annuel, le commissaire aux comptes doit consulter nos pièces sur
le Nextcloud. J'ai créé le partage suivant :

https://cloud.example.org/s/Zr4mQ8vKx2LpT7w

protégé par le mot de passe Audit§Exercice2025 (avec le signe paragraphe, je sais,
ce n'est pas pratique). Date d'expiration : 31/03/2026.

Vous trouverez en pièce jointe la lettre de mission (réf. LM-2026-014).
Pouvez-vous vérifier que le partage est bien en lecture seule ?

Cordialement,
Jérôme Martin
Expert-comptable associé — Cabinet Martin
SIRET 441 928 337 00018
"""
m = MIMEMultipart("mixed")
m.attach(b64_text(t9))
p = MIMEApplication(PDF, "pdf"); p.add_header("Content-Disposition", "attachment", filename="lettre-mission-LM-2026-014.pdf")
m.attach(p)
hdr(m, "from mail.cabinet-martin.fr (mail.cabinet-martin.fr [198.51.100.61])\n\tby mx1.example.org (Postfix) with ESMTPS id 4Z9uY9zSxDe\n\tfor <bob@example.org>; Thu, 05 Feb 2026 16:22:40 +0100 (CET)",
    "<1738768960.4821.7f3a9c21@cabinet-martin.fr>", "Thu, 5 Feb 2026 16:22:38 +0100",
    "=?utf-8?B?SsOpcsO0bWUgTWFydGlu?= <j.martin@cabinet-martin.fr>", "bob@example.org",
    "Partage audit annuel", cc="cabinet-martin@assistance.example.org",
    extra=[("User-Agent", "Roundcube Webmail/1.6.9")])
write("009-fr-base64-partage-audit.eml", m)

# ---------------------------------------------------------------- 010  (secret inside an attached .txt in windows-1252)
txt10 = """Codes d'accès bibliothèque — mise à jour février 2026
======================================================

Porte du personnel (digicode) ....... 7741B
Alarme (code de mise en service) .... 2093
Wi-Fi personnel (BIB-STAFF) ......... Roman-Policier-1987
Wi-Fi public (BIB-PUBLIC) ........... portail captif, pas de clé
Borne de prêt RFID, n° de série ..... RF-3320-0097

Ne pas afficher ce document.
"""
m = MIMEMultipart("mixed")
m.attach(qp_text("""Bonjour Bob,

Voici le document avec les codes, comme vous l'avez demandé pour l'intervention
de lundi. Merci de le supprimer après.

Céline
""", "utf-8"))
a = MIMEText(txt10, "plain", "windows-1252"); a.replace_header("Content-Type", 'text/plain; charset="windows-1252"; name="codes-acces-2026.txt"')
a.add_header("Content-Disposition", "attachment", filename="codes-acces-2026.txt")
m.attach(a)
hdr(m, "from smtp.bibliotheque-ville.fr (smtp.bibliotheque-ville.fr [198.51.100.72])\n\tby mx1.example.org (Postfix) with ESMTPS id 4Z9vZ0aTyEf\n\tfor <bob@example.org>; Fri, 13 Feb 2026 17:05:51 +0100 (CET)",
    "<a3b4c5d6-e7f8-4901-a2b3-c4d5e6f7a8b9@bibliotheque-ville.fr>", "Fri, 13 Feb 2026 17:05:49 +0100",
    "=?utf-8?Q?C=C3=A9line_Roux?= <c.roux@bibliotheque-ville.fr>", "bob@example.org",
    Header("Codes d'accès pour lundi", "utf-8").encode(),
    extra=[("User-Agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.6.0")])
write("010-fr-piece-jointe-txt-codes.eml", m)

# ---------------------------------------------------------------- 011  (English, no secret, inline image, password talk)
t11 = """Hi Alice,

Quick one: when I log into the webmail it says "your password has expired" and sends
me to a page I've never seen before. Password: the usual one, I haven't changed it since
you set it up. Screenshot inline.

Is that page legit? The address bar says https://mail.example.org/?_task=settings&_action=plugin.password

Thanks,
Sam Whitaker
Greenhouse
"""
h11 = """<div>Hi Alice,<br><br>Quick one: when I log into the webmail it says &quot;your password has expired&quot; and sends me to a page I&#39;ve never seen before. Password: the usual one, I haven&#39;t changed it since you set it up. Screenshot inline.<br><br>
<img src="cid:part1.Kq8vR2mZ.7xLpT4wN@greenhouse.example.com" alt="screenshot"><br><br>
Is that page legit? The address bar says https://mail.example.org/?_task=settings&amp;_action=plugin.password<br><br>Thanks,<br>Sam Whitaker<br>Greenhouse</div>
"""
alt = MIMEMultipart("alternative"); alt.attach(qp_text(t11)); alt.attach(qp_html(h11))
rel = MIMEMultipart("related"); rel.attach(alt)
img = MIMEImage(png(), "png"); img.add_header("Content-ID", "<part1.Kq8vR2mZ.7xLpT4wN@greenhouse.example.com>"); img.add_header("Content-Disposition", "inline", filename="screenshot.png")
rel.attach(img)
hdr(rel, "from smtp.greenhouse.example.com (smtp.greenhouse.example.com [203.0.113.77])\n\tby mx1.example.org (Postfix) with ESMTPS id 4Z9wA1bUzFg\n\tfor <alice@example.org>; Tue, 24 Feb 2026 08:14:09 +0000 (UTC)",
    "<7c2d9e41-3f8a-4b6c-a1d5-e9f0b2c4d6a8@greenhouse.example.com>", "Tue, 24 Feb 2026 08:14:06 +0000",
    "Sam Whitaker <sam@greenhouse.example.com>", "Alice <alice@example.org>",
    "webmail says password expired?", cc="greenhouse@assistance.example.org",
    extra=[("User-Agent", "Mozilla Thunderbird")])
write("011-en-mot-de-passe-expire-sans-secret.eml", rel)

# ---------------------------------------------------------------- 012  (Outlook reply, windows-1252 QP, DSN in quoted history, encoded From)
t12 = """Bonjour Emma,

Merci, le site de billetterie remarche. Par contre je vois que dans votre message d'hier
vous avez recopié toute la chaîne de connexion, est-ce qu'il faut changer le mot de passe
maintenant ?

Bien à vous,
Bérénice Carré
Chargée de billetterie — Théâtre du Port
02 98 44 61 30

De : Emma <emma@example.org>
Envoyé : mercredi 18 février 2026 18:02
À : billetterie@theatre-du-port.org
Objet : RE: [example #5301] billetterie en erreur 500

Bonjour Madame Carré,

C'était la variable d'environnement qui avait sauté après la mise à jour. J'ai remis :

DATABASE_URL="pgsql://billet_app:Strapontin%2A2026@db.theatre-du-port.org:5432/billetterie?serverVersion=15&charset=utf8"

et vidé le cache (bin/console cache:clear, Symfony 6.4.18). Tout est reparti à 17h55.

Emma
"""
m = qp_text(t12, "windows-1252")
hdr(m, "from mail.theatre-du-port.org (mail.theatre-du-port.org [198.51.100.95])\n\tby mx1.example.org (Postfix) with ESMTPS id 4Z9xB2cVaGh\n\tfor <emma@example.org>; Thu, 19 Feb 2026 09:40:27 +0100 (CET)",
    "<005b01dc8127$a4c9e1f0$ee5da5d0$@theatre-du-port.org>", "Thu, 19 Feb 2026 09:40:25 +0100",
    "=?windows-1252?Q?B=E9r=E9nice_Carr=E9?= <billetterie@theatre-du-port.org>", "'Emma' <emma@example.org>",
    "RE: [example #5301] billetterie en erreur 500", cc="theatre-du-port@assistance.example.org",
    extra=[("X-Mailer", "Microsoft Outlook 16.0"), ("Thread-Index", "AQHbgS2mZ9xLpT4wN3cYb5HJd1sF6g==")])
write("012-fr-reponse-outlook-dsn-cite.eml", m)
print("built")

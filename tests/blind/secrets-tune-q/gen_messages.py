# Wraps hand-written texts into MIME messages. Only encoding is done here.
import base64, quopri, os
from email.header import Header
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'messages')

def b64(data, width=76):
    s = base64.b64encode(data).decode()
    return '\n'.join(s[i:i+width] for i in range(0, len(s), width))

def qp(text, cs):
    return quopri.encodestring(text.replace('\n', '\r\n').encode(cs)).decode('ascii').replace('\r\n', '\n').replace('=0D\n', '\n')

def qpe(text, cs='utf-8'):
    # quoted-printable without CRLF games
    return quopri.encodestring(text.encode(cs)).decode('ascii')

def enc_subj(s, cs='utf-8'):
    if s.isascii():
        return s
    return Header(s, cs).encode()

def write(name, raw):
    if isinstance(raw, str):
        raw = raw.encode('utf-8') if not raw.isascii() else raw.encode('ascii')
    open(os.path.join(OUT, name), 'wb').write(raw)

PNG = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAYAAAAf8/9hAAAAP0lEQVR42mNkYPhfz0AEYBxVSF+FjP8ZGBj+MzAw/Gf4z8DA8J+RgYGBgQmqgImBgYGJgYGBkQGqmQGqg3EAAG1QBxE1m3DmAAAAAElFTkSuQmCC')
PDF = b'%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\n/Encrypt 4 0 R\ntrailer<</Root 1 0 R>>\n%%EOF\n'

# ---------------------------------------------------------------- 001
plain = """Bonjour Alice,

Comme convenu ce matin, voici les comptes des trois nouveaux agents pour la
messagerie et le Nextcloud. Merci de les créer avant lundi.

Agent               Identifiant        Mot de passe provisoire
Léon Chabert        l.chabert          Mairie#Tilleul-31
Yasmina Ouali       y.ouali            Fontaine_Place8
Hugo Perrin         h.perrin           Clocher!Vent62

Ils seront rattachés au service urbanisme (sauf H. Perrin : état civil).

Bien cordialement,

Sandrine Moreau
Secrétariat général - Mairie d'Exemple
Tél. 03 84 27 15 60
"""
html = """<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"></head>
<body lang="FR" style="font-family:Calibri,sans-serif;font-size:11pt">
<p>Bonjour Alice,</p>
<p>Comme convenu ce matin, voici les comptes des trois nouveaux agents pour la messagerie et le Nextcloud. Merci de les créer avant lundi.</p>
<table border="1" cellspacing="0" cellpadding="4" style="border-collapse:collapse">
<tr><td><b>Agent</b></td><td><b>Identifiant</b></td><td><b>Mot de passe provisoire</b></td></tr>
<tr><td>Léon Chabert</td><td>l.chabert</td><td>Mairie#Tilleul-31</td></tr>
<tr><td>Yasmina Ouali</td><td>y.ouali</td><td>Fontaine_Place8</td></tr>
<tr><td>Hugo Perrin</td><td>h.perrin</td><td>Clocher!Vent62</td></tr>
</table>
<p>Ils seront rattachés au service urbanisme (sauf H.&nbsp;Perrin : état civil).</p>
<p>Bien cordialement,</p>
<p>Sandrine Moreau<br>Secrétariat général - Mairie d'Exemple<br>Tél. 03 84 27 15 60</p>
</body></html>
"""
write('001-tableau-html-comptes-mairie.eml', f"""Received: from mail.mairie-exemple.fr (mail.mairie-exemple.fr [198.51.100.14])
	by mx1.example.org (Postfix) with ESMTPS id 4Zq1Lx0T2kz7Rb
	for <alice@example.org>; Thu, 26 Feb 2026 10:12:44 +0100 (CET)
Message-ID: <PR3P195MB0712A4C9E1B2F0D3A5E7C9B1D4F6A8C0@PR3P195MB0712.EURP195.PROD.OUTLOOK.COM>
Date: Thu, 26 Feb 2026 09:12:38 +0000
From: Sandrine Moreau <s.moreau@mairie-exemple.fr>
To: Alice <alice@example.org>
Cc: mairie-exemple@assistance.example.org
Subject: {enc_subj('Création des comptes - nouveaux agents')}
MIME-Version: 1.0
X-Mailer: Microsoft Outlook 16.0
Content-Type: multipart/alternative; boundary="_000_PR3P195MB0712A4C9_"
Content-Language: fr-FR

--_000_PR3P195MB0712A4C9_
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

{qp(plain, 'utf-8')}
--_000_PR3P195MB0712A4C9_
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

{qp(html, 'utf-8')}
--_000_PR3P195MB0712A4C9_--
""")

# ---------------------------------------------------------------- 002
body = """Bonjour Bob,

Tout est dans l'objet, désolée, c'est plus rapide pour moi de le retrouver comme
ça. C'est pour le répertoire partagé « Comptabilité 2026 » sur le Nextcloud, les
deux collègues de l'accueil doivent pouvoir l'ouvrir dès demain.

Lien du partage (ça, ce n'est pas confidentiel) :
https://cloud.example.org/s/Hy6tPq3LmZx8WkA

Merci !
Corinne
--
Cabinet Martin - expertise comptable
12 rue des Tanneurs - 01 47 22 83 10
"""
write('002-objet-encode-mdp-partage.eml', f"""Received: from smtp.cabinet-martin.fr (smtp.cabinet-martin.fr [192.0.2.33])
	by mx1.example.org (Postfix) with ESMTPS id 4Zr8Km2P5tz3Vw
	for <bob@example.org>; Mon, 2 Mar 2026 17:48:03 +0100 (CET)
Message-ID: <7c1f2e90-4a3b-4d85-9f6e-0b2d8a17c453@cabinet-martin.fr>
Date: Mon, 2 Mar 2026 17:47:55 +0100
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Language: fr
To: Bob <bob@example.org>
From: Corinne Aubert <c.aubert@cabinet-martin.fr>
Subject: {enc_subj('mot de passe du répertoire partagé : Été-Orage-77')}
Content-Type: text/plain; charset=UTF-8; format=flowed
Content-Transfer-Encoding: 8bit

{body}""")

# ---------------------------------------------------------------- 003
body = """Bonjour,

Je suis la nouvelle présidente de l'association depuis l'assemblée générale
du 24 janvier. Pourriez-vous me donner accès à la boîte presidence@asso-velo.org ?
L'ancien président m'a transmis le mot de passe : Crème-Brûlée#4 mais il ne
fonctionne pas, le webmail dit « identifiants incorrects ».

Je joins le PV de l'AG si besoin (référence PV-AG-2026-01).

Bien cordialement,
Odile Ferrand
06 33 81 27 49
"""
write('003-base64-windows1252-mdp-accent.eml', b"""Received: from smtp.orange.example (smtp.orange.example [203.0.113.9])
	by mx1.example.org (Postfix) with ESMTPS id 4Zs0Tn7Q1bz2Hk
	for <contact@example.org>; Tue, 3 Feb 2026 21:05:17 +0100 (CET)
Message-ID: <000001dc7542$9a3be2f0$ceb3a8d0$@orange.example>
Date: Tue, 3 Feb 2026 21:05:11 +0100
From: "Odile Ferrand" <odile.ferrand@orange.example>
To: <contact@example.org>
Subject: =?windows-1252?Q?Acc=E8s_bo=EEte_pr=E9sidence?=
MIME-Version: 1.0
X-Mailer: Microsoft Outlook 14.0
Content-Type: text/plain; charset="windows-1252"
Content-Transfer-Encoding: base64
Content-Language: fr

""" + b64(body.replace('\n', '\r\n').encode('cp1252')).encode() + b"\n")

# ---------------------------------------------------------------- 004 (declared iso-8859-1, body is UTF-8)
body = """Bonjour Emma,

Petit souci sur le site du théâtre : depuis la mise à jour d'hier, la page
« Saison 2026-2027 » affiche une erreur 500.

Tu peux te connecter en SFTP avec le compte deploy-tdp, mot de passe
Marionnette77-Quai, le site est dans /var/www/theatre. Les logs sont dans
/var/log/nginx/theatre.error.log.

Merci d'avance,
Sophie
"""
write('004-charset-faux-mdp-sftp.eml', b"""Received: from smtp.free.example (smtp.free.example [198.51.100.201])
	by mx1.example.org (Postfix) with ESMTP id 4Zt3Wd6R8cz1Qp
	for <emma@example.org>; Sat, 17 Jan 2026 11:31:40 +0100 (CET)
Message-ID: <1737109893.412.sophie@free.example>
Date: Sat, 17 Jan 2026 11:31:33 +0100
From: Sophie Bernard <sophie.bernard@free.example>
To: emma@example.org
Subject: =?ISO-8859-1?Q?site_du_th=E9=E2tre_en_erreur?=
MIME-Version: 1.0
X-Mailer: Zimbra 9.0.0_GA_4546
Content-Type: text/plain; charset=ISO-8859-1
Content-Transfer-Encoding: 8bit

""" + body.encode('utf-8'))

# ---------------------------------------------------------------- 005 (.env attachment)
body = """Hi Bob,

The contact form on greenhouse.example.com stopped sending mail after Friday's
deploy (release 2.8.0). I've attached the .env we use in production so you can
compare with what's on the server - Emma said the SMTP password changed on your
side?

Thanks,
Marcus Lindqvist
Backend, Greenhouse
"""
env = """# production - do not commit
APP_ENV=production
APP_DEBUG=false
DATABASE_URL=postgresql://gh_prod:Vn2q8XkLw7Rz4Tp0@10.20.0.12:5432/greenhouse
SMTP_HOST=smtp.example.org
SMTP_PORT=587
SMTP_USER=forms@greenhouse.example.com
SMTP_PASS=Pollen!Drift-58
SENTRY_AUTH_TOKEN=sntrys_eyJpYXQiOjE3Mzk0NTYwMDB9_Qk7xZ2vL9mWp3Rt8YcN0bH5sJd4Fg1AeUoPiTz6Xw2
STRIPE_PUBLISHABLE_KEY=pk_live_51PxQ7mKfT2vR9mLwYc4HdZ0aPe7sBg3uXoQi6nVt
RELEASE=2.8.0
"""
write('005-env-en-piece-jointe.eml', f"""Received: from mail-ej1-f41.google.example (mail-ej1-f41.google.example [209.85.218.41])
	by mx1.example.org (Postfix) with ESMTPS id 4Zv5Hq2M9dz8Kc
	for <bob@example.org>; Mon, 12 Jan 2026 09:44:21 +0100 (CET)
Message-ID: <CAF7kq2Lx9+Wm3RtN8yBc0HsJd5Fg4AeUo@mail.gmail.example>
Date: Mon, 12 Jan 2026 09:44:08 +0100
From: Marcus Lindqvist <marcus@greenhouse.example.com>
To: bob@example.org
Cc: greenhouse@assistance.example.org
Subject: Contact form not sending since Friday
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="000000000000a1b2c3d4e5f60718"

--000000000000a1b2c3d4e5f60718
Content-Type: text/plain; charset="UTF-8"

{body}
--000000000000a1b2c3d4e5f60718
Content-Type: application/octet-stream; name="production.env"
Content-Disposition: attachment; filename="production.env"
Content-Transfer-Encoding: base64
X-Attachment-Id: f_m5tq8x0a0

{b64(env.encode())}
--000000000000a1b2c3d4e5f60718--
""")

# ---------------------------------------------------------------- 006 (related, inline image)
plain = """Bonjour,

J'ai une erreur quand je veux me connecter au Wi-Fi de la salle du conseil avec
la tablette du maire (voir capture).

Le réseau c'est MAIRIE-CONSEIL et la clé qu'on m'a donnée c'est
Conseil-Municipal_2026. Ça dit « Impossible de se connecter ».

[image: capture.png]

Merci,
Jérôme Blanc, adjoint
"""
html = """<div dir="ltr"><p>Bonjour,</p>
<p>J'ai une erreur quand je veux me connecter au Wi-Fi de la salle du conseil avec la tablette du maire (voir capture).</p>
<p>Le réseau c'est <b>MAIRIE-CONSEIL</b> et la clé qu'on m'a donnée c'est <b>Conseil-Municipal_2026</b>. Ça dit « Impossible de se connecter ».</p>
<p><img src="cid:ii_m7c2xq4p0" alt="capture.png" width="320" height="240"></p>
<p>Merci,<br>Jérôme Blanc, adjoint</p></div>
"""
write('006-image-inline-cle-wifi.eml', f"""Received: from mail.mairie-exemple.fr (mail.mairie-exemple.fr [198.51.100.14])
	by mx1.example.org (Postfix) with ESMTPS id 4Zw7Gp5N3fz6Jd
	for <mairie-exemple@assistance.example.org>; Wed, 11 Feb 2026 18:02:57 +0100 (CET)
Message-ID: <CAM9vLq2xWp7Rk3Yn0Bc5HsJ4dFZ8tQe@mail.gmail.example>
Date: Wed, 11 Feb 2026 18:02:49 +0100
From: =?UTF-8?Q?J=C3=A9r=C3=B4me_Blanc?= <j.blanc@mairie-exemple.fr>
To: mairie-exemple@assistance.example.org, alice@example.org
Subject: {enc_subj('Wi-Fi salle du conseil - tablette')}
MIME-Version: 1.0
Content-Type: multipart/related; boundary="000000000000f1e2d3c4b5a69788"

--000000000000f1e2d3c4b5a69788
Content-Type: multipart/alternative; boundary="000000000000f1e2d3c4b5a69787"

--000000000000f1e2d3c4b5a69787
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

{qp(plain, 'utf-8')}
--000000000000f1e2d3c4b5a69787
Content-Type: text/html; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

{qp(html, 'utf-8')}
--000000000000f1e2d3c4b5a69787--

--000000000000f1e2d3c4b5a69788
Content-Type: image/png; name="capture.png"
Content-Disposition: inline; filename="capture.png"
Content-Transfer-Encoding: base64
Content-ID: <ii_m7c2xq4p0>
X-Attachment-Id: ii_m7c2xq4p0

{b64(PNG)}
--000000000000f1e2d3c4b5a69788--
""")

# ---------------------------------------------------------------- 007 (forward as attachment)
inner_body = """Bonjour Monsieur Roussel,

Suite à l'installation de la nouvelle centrale d'alarme du CCAS, voici les
codes :

- code maître (installateur) : 918273
- code utilisateur accueil : 4650
- numéro de télésurveillance : 03 84 90 12 77 (ce n'est pas un code)

Le contrat de maintenance porte le numéro TS-88412.

Cordialement,
Sécurité Services Est
"""
inner = f"""Received: from mail.securite-services.example (mail.securite-services.example [192.0.2.140])
	by mx.ccas-exemple.fr with ESMTPS; Fri, 6 Feb 2026 14:20:03 +0100
Message-ID: <20260206132001.5F2A1C0@securite-services.example>
Date: Fri, 6 Feb 2026 14:20:01 +0100
From: =?UTF-8?Q?S=C3=A9curit=C3=A9_Services_Est?= <technique@securite-services.example>
To: p.roussel@ccas-exemple.fr
Subject: {enc_subj("Codes centrale d'alarme CCAS")}
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: quoted-printable

{qp(inner_body, 'utf-8')}"""
outer_body = """Bonjour,

Je vous transfère le mail de l'installateur de l'alarme. Pouvez-vous l'archiver
dans notre dossier « Bâtiment » sur le Nextcloud et créer un accès en lecture
pour Mme Lopez ?

Pierre Roussel
CCAS - 03 84 90 12 00
"""
write('007-transfert-en-piece-jointe-alarme.eml', f"""Received: from mx.ccas-exemple.fr (mx.ccas-exemple.fr [198.51.100.77])
	by mx1.example.org (Postfix) with ESMTPS id 4Zx9Bn1K7gz4Mf
	for <ccas@assistance.example.org>; Mon, 9 Feb 2026 08:57:12 +0100 (CET)
Message-ID: <AM0PR07MB6114E3B2C9D1A5F7E0B4C2D8A6F1E3B5@AM0PR07MB6114.eurprd07.prod.outlook.com>
Date: Mon, 9 Feb 2026 07:57:05 +0000
From: Pierre Roussel <p.roussel@ccas-exemple.fr>
To: "ccas@assistance.example.org" <ccas@assistance.example.org>
Cc: Bob <bob@example.org>
Subject: {enc_subj("TR: Codes centrale d'alarme CCAS")}
MIME-Version: 1.0
X-Mailer: Microsoft Outlook 16.0
Content-Type: multipart/mixed; boundary="_004_AM0PR07MB6114E3B2_"

--_004_AM0PR07MB6114E3B2_
Content-Type: text/plain; charset="iso-8859-1"
Content-Transfer-Encoding: quoted-printable

{qp(outer_body, 'iso-8859-1')}
--_004_AM0PR07MB6114E3B2_
Content-Type: message/rfc822
Content-Disposition: attachment; filename="Codes centrale d'alarme CCAS.eml"

{inner}
--_004_AM0PR07MB6114E3B2_--
""")

# ---------------------------------------------------------------- 008 (attached txt, windows-1252)
body = """Bonjour Alice,

Ci-joint le fichier avec les accès Wi-Fi des différentes salles, comme demandé pour
la mise à jour des bornes. Les bornes sont des Ubiquiti U6-Lite (firmware 6.6.77).

Bonne journée,
Nathalie Vasseur
Directrice - École des Pins
"""
txt = """Accès Wi-Fi - École des Pins (mis à jour le 05/01/2026)

Salle                  SSID                  Clé
Classe CP-CE1          PINS-CLASSE-1         Écureuil&Gland22
Classe CE2-CM1         PINS-CLASSE-2         Hérisson-Mousse91
Salle des maîtres      PINS-ADMIN            Préau!Marelle#60
Invités (réunions)     PINS-INVITES          voir affiche dans le hall

Contrôleur UniFi : https://192.168.10.2:8443  (compte admin dans le coffre, pas ici)
"""
write('008-fichier-txt-cles-wifi.eml', f"""Received: from mail.ecole-des-pins.fr (mail.ecole-des-pins.fr [192.0.2.61])
	by mx1.example.org (Postfix) with ESMTPS id 4Zy2Cv8L4hz9Nq
	for <alice@example.org>; Wed, 7 Jan 2026 12:15:30 +0100 (CET)
Message-ID: <b3f9c1d2-8e47-4a06-9f15-2c7d0e8a4b61@ecole-des-pins.fr>
Date: Wed, 7 Jan 2026 12:15:22 +0100
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Language: fr
From: Nathalie Vasseur <direction@ecole-des-pins.fr>
To: Alice <alice@example.org>
Subject: =?UTF-8?Q?Acc=C3=A8s_Wi-Fi_des_salles?=
Content-Type: multipart/mixed; boundary="------------q7XkL2vWm9RtN3yBc0HsJd5F"

This is a multi-part message in MIME format.
--------------q7XkL2vWm9RtN3yBc0HsJd5F
Content-Type: text/plain; charset=UTF-8; format=flowed
Content-Transfer-Encoding: 8bit

{body}
--------------q7XkL2vWm9RtN3yBc0HsJd5F
Content-Type: text/plain; charset=windows-1252; name="acces-wifi.txt"
Content-Disposition: attachment; filename="acces-wifi.txt"
Content-Transfer-Encoding: base64

{b64(txt.replace(chr(10), chr(13)+chr(10)).encode('cp1252'))}
--------------q7XkL2vWm9RtN3yBc0HsJd5F--
""")

# ---------------------------------------------------------------- 009 (iPhone, PDF + password in body)
body = """Bonjour David,

Voici la facture de novembre protégée comme demandé par notre expert-comptable.
Le mot de passe pour ouvrir le PDF est TDP-factu-1125 (il faudra me dire si ça
marche de votre côté).

Facture n° TDP-F-2025-1187, échéance 15/12/2025.

Bonne journée
Sophie

Envoyé de mon iPhone
"""
write('009-iphone-pdf-protege-mdp.eml', f"""Received: from smtp.theatre-du-port.org (smtp.theatre-du-port.org [198.51.100.180])
	by mx1.example.org (Postfix) with ESMTPS id 4Zz4Dw9M6jz1Pr
	for <david@example.org>; Thu, 27 Nov 2025 19:40:11 +0100 (CET)
Message-ID: <5E8A2C41-7B39-4D0F-A6E1-93C2B7F08D14@theatre-du-port.org>
Date: Thu, 27 Nov 2025 19:40:02 +0100
From: Sophie Bernard <administration@theatre-du-port.org>
To: David <david@example.org>
Subject: Facture novembre
Mime-Version: 1.0 (1.0)
X-Mailer: iPhone Mail (22B91)
Content-Type: multipart/mixed; boundary=Apple-Mail-7F3C2A91-0E4B-4D85-B6A1-2C9D7E0F3B58

--Apple-Mail-7F3C2A91-0E4B-4D85-B6A1-2C9D7E0F3B58
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

{qp(body, 'utf-8')}
--Apple-Mail-7F3C2A91-0E4B-4D85-B6A1-2C9D7E0F3B58
Content-Type: application/pdf; name=TDP-F-2025-1187.pdf; x-apple-part-url=2A6F1C09-8B3E-4D27-9C50-E1B4A7D3F286
Content-Disposition: attachment; filename=TDP-F-2025-1187.pdf
Content-Transfer-Encoding: base64

{b64(PDF)}
--Apple-Mail-7F3C2A91-0E4B-4D85-B6A1-2C9D7E0F3B58--
""")

# ---------------------------------------------------------------- 010 (no secret, newsletter-like)
plain = """Lettre d'information de la Médiathèque - mars 2026

Nouveautés : 48 romans, 12 BD, 6 jeux vidéo.
Heure du conte : mercredi 18 mars à 15 h.

Mot de passe oublié pour votre compte lecteur ? Utilisez le lien « Mot de passe
oublié » sur le portail, nous ne vous demanderons jamais votre mot de passe par mail.

Voir en ligne : https://lettre.bibliotheque-ville.fr/v/2603?u=9f3Kq2LzXw7&c=mars26
Se désabonner : https://lettre.bibliotheque-ville.fr/unsub?u=9f3Kq2LzXw7&t=b7c1e09a4f2d
"""
html = """<html><body style="font-family:Arial">
<p><img src="cid:logo-mediatheque" alt="Médiathèque" width="120"></p>
<h2>Lettre d'information de la Médiathèque - mars 2026</h2>
<p>Nouveautés : 48 romans, 12 BD, 6 jeux vidéo.<br>Heure du conte : mercredi 18 mars à 15 h.</p>
<p>Mot de passe oublié pour votre compte lecteur ? Utilisez le lien « Mot de passe oublié » sur le portail, nous ne vous demanderons jamais votre mot de passe par mail.</p>
<p><a href="https://lettre.bibliotheque-ville.fr/c/2603/8Xk2Lq9Vw4MzR7tN0yBc5HsJ?u=9f3Kq2LzXw7">Voir en ligne</a> |
<a href="https://lettre.bibliotheque-ville.fr/unsub?u=9f3Kq2LzXw7&amp;t=b7c1e09a4f2d">Se désabonner</a></p>
<img src="https://lettre.bibliotheque-ville.fr/o/2603/9f3Kq2LzXw7.gif" width="1" height="1" alt="">
</body></html>
"""
write('010-lettre-info-sans-secret.eml', f"""Received: from lettre.bibliotheque-ville.fr (lettre.bibliotheque-ville.fr [192.0.2.88])
	by mx1.example.org (Postfix) with ESMTPS id 4Zb6Fx1N8kz3Qs
	for <contact@example.org>; Tue, 3 Mar 2026 07:00:04 +0100 (CET)
Message-ID: <2603.9f3Kq2LzXw7.1772517604@lettre.bibliotheque-ville.fr>
Date: Tue, 03 Mar 2026 07:00:04 +0100
From: =?UTF-8?Q?M=C3=A9diath=C3=A8que_municipale?= <lettre@bibliotheque-ville.fr>
To: contact@example.org
Subject: {enc_subj("Lettre d'information - mars 2026")}
List-Unsubscribe: <https://lettre.bibliotheque-ville.fr/unsub?u=9f3Kq2LzXw7&t=b7c1e09a4f2d>
Precedence: bulk
MIME-Version: 1.0
X-Mailer: Sendy 6.1
Content-Type: multipart/related; boundary="b1_0d8f2c7a9e4b3f61"

--b1_0d8f2c7a9e4b3f61
Content-Type: multipart/alternative; boundary="b2_0d8f2c7a9e4b3f61"

--b2_0d8f2c7a9e4b3f61
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

{qp(plain, 'utf-8')}
--b2_0d8f2c7a9e4b3f61
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

{b64(html.encode('utf-8'))}
--b2_0d8f2c7a9e4b3f61--

--b1_0d8f2c7a9e4b3f61
Content-Type: image/png; name="logo.png"
Content-Transfer-Encoding: base64
Content-ID: <logo-mediatheque>
Content-Disposition: inline; filename="logo.png"

{b64(PNG)}
--b1_0d8f2c7a9e4b3f61--
""")

# ---------------------------------------------------------------- 011 (EN, token in both parts, base64 html)
plain = """Hi Alice,

We're wiring up uptime alerts to our Nextcloud Talk room. I generated a PagerDuty
integration key and an Uptime Kuma API key - could you add them to the monitoring
host (mon01, 10.20.0.60)?

PagerDuty routing key: R02Q7XK9VLP3ZTR8MWN5YBC0HSJD4FG1
Uptime Kuma API key: uk2_Zq8Lx2vWm9KpRt3YcN0bH5sJd7Fg4AeU

The Talk room token is qk4xzp2m (that one's just the room id in the URL).

Thanks!
Ana Costa
Ops, Greenhouse
"""
html = """<div dir="ltr">Hi Alice,<div><br></div><div>We&#39;re wiring up uptime alerts to our Nextcloud Talk room. I generated a PagerDuty integration key and an Uptime Kuma API key - could you add them to the monitoring host (mon01, 10.20.0.60)?</div><div><br></div><div>PagerDuty routing key: <font face="monospace">R02Q7XK9VLP3ZTR8MWN5YBC0HSJD4FG1</font></div><div>Uptime Kuma API key: <font face="monospace">uk2_Zq8Lx2vWm9KpRt3YcN0bH5sJd7Fg4AeU</font></div><div><br></div><div>The Talk room token is qk4xzp2m (that one&#39;s just the room id in the URL).</div><div><br></div><div>Thanks!</div><div>Ana Costa<br>Ops, Greenhouse</div></div>
"""
write('011-en-jetons-dans-les-deux-parties.eml', f"""Received: from mail-wr1-f52.google.example (mail-wr1-f52.google.example [209.85.221.52])
	by mx1.example.org (Postfix) with ESMTPS id 4Zc8Gy3P0mz5Rt
	for <alice@example.org>; Fri, 20 Feb 2026 15:26:48 +0100 (CET)
Message-ID: <CAB4xR9vLq2+Wm7KpT3YcN0bH5sJd8Fg@mail.gmail.example>
Date: Fri, 20 Feb 2026 15:26:37 +0100
From: Ana Costa <ana.costa@greenhouse.example.com>
To: Alice <alice@example.org>
Cc: greenhouse@assistance.example.org
Subject: Alerting keys for mon01
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="0000000000007e6f5d4c3b2a1908"

--0000000000007e6f5d4c3b2a1908
Content-Type: text/plain; charset="UTF-8"

{plain}
--0000000000007e6f5d4c3b2a1908
Content-Type: text/html; charset="UTF-8"
Content-Transfer-Encoding: base64

{b64(html.encode())}
--0000000000007e6f5d4c3b2a1908--
""")

# ---------------------------------------------------------------- 012 (QP soft break inside the secret)
# The quoted-printable below is written by hand so that the connection string is
# cut by a soft line break (=) inside the password.
write('012-qp-coupure-dans-dsn.eml', """Received: from mail.bibliotheque-ville.fr (mail.bibliotheque-ville.fr [192.0.2.88])
	by mx1.example.org (Postfix) with ESMTPS id 4Zd1Hz5Q2nz7St
	for <emma@example.org>; Wed, 14 Jan 2026 16:03:29 +0100 (CET)
Message-ID: <6d2b8f41a9c3e075@bibliotheque-ville.fr>
Date: Wed, 14 Jan 2026 16:03:21 +0100
From: Thomas Girard <t.girard@bibliotheque-ville.fr>
To: emma@example.org
Cc: bibliotheque@assistance.example.org
Subject: =?UTF-8?Q?Catalogue_en_ligne_:_erreur_de_connexion_=C3=A0_la_base?=
MIME-Version: 1.0
User-Agent: Roundcube Webmail/1.6.9
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: quoted-printable

Bonjour Emma,

Le catalogue en ligne (PMB 7.5.4) affiche =C2=AB Impossible de se connecter =
=C3=A0 la base =C2=BB depuis ce matin. La cha=C3=AEne de connexion dans le f=
ichier de config est :

mysql://pmb_opac:Lecture%26Bibl=
io-2024@db.bibliotheque-ville.fr:3306/pmb?charset=3Dutf8mb4

et le mot de passe de la base a expir=C3=A9 le 31/12 d'apr=C3=A8s l'h=C3=A9=
bergeur (ticket [example #4903]). Je ne sais pas s'il faut le changer des de=
ux c=C3=B4t=C3=A9s.

Merci,
Thomas Girard
M=C3=A9diath=C3=A8que municipale - 04 91 62 38 05
""")
print('ok')
